"""θ_neon = (1 + w)·θ_r − w·θ_s: the formula and its streaming merge of two files (`extrapolate`), the merge
from a θ_r held in memory (`merger`), as a Lightning callback at fine-tune snapshots (`callback`), and the
`neon-merge` command (`merge_command`)."""
