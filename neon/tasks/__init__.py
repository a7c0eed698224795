"""Task entry points, one module per kind of task; `conf/task/<name>.yaml` names each task's function
(`entry`), which `neon.launch.cli` calls in the processes the trainer asks for.

- `pipeline`: `task=neon`, every stage chained through the artifact cache
- `standalone`: one stage alone on paths the user gives (pretrain, synthesize, finetune)
- `merge`: θ_neon streamed from two checkpoint files (`task=merge`)
- `export`: files for other tools (sample, export)
- `evaluate`: scores and reference statistics (evaluate, reference)
- `search`: many points of (B, w, cfg): the reference search protocol (`task=search`), `neon.w=auto`
- `report`: the tables and plots of a finished sweep (`task=report`)
- `diagnose`: the anti-alignment diagnostic

What the pipeline, the searches and the diagnostic share, θ_r, S and θ_s from the cache, is a stage:
`neon.stages.front`.

Lightning is imported only where a stage trains (neon/stages/training.py), so sample, evaluate and export start
at about `import torch`; merge and report do not import a model family either.
"""
