"""Weights in files: the one reader of every checkpoint format (`readers`, with the safe reader of NVIDIA's
persistence pickles, `persistence`), θ written as a Lightning checkpoint (`lightning_checkpoints`), and a
release's files and model card (`release_export`)."""
