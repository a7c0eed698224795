"""The bottom layer, which every other one uses: the user-facing error (`errors`), files and digests (`io`),
seeds (`seeding`), the small config helpers (`values`), the checks of a config's counts and seeds
(`config_checks`), the collective operations of DDP ranks (`collectives`), the content-addressed artifact
cache (`cache`), release-mode sampling (`release_sampling`) and the family contract (`contract.NeonModule`).
Of the layers above, only the contract imports one module: `neon.weights.readers`, to load a checkpoint."""
