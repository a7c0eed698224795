"""The bottom layer, which every other one uses and which imports none of them: the user-facing error, files
and digests, seeds, the small config helpers, the collective operations of DDP ranks, release-mode sampling,
the checks of a config's counts and seeds, and the family contract (`contract.NeonModule`)."""
