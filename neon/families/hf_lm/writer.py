"""θ back to the transformers ecosystem: the base folder's model with θ's weights, its generation config and its
tokenizer, written to a temporary folder and renamed into place (a folder `AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` load)."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from neon.core.io import atomic_folder, write_text
from neon.data.hf_tokenizer import TOKENIZER_FILES


def largest_shard(folder: Path) -> int | None:
    """The size in bytes of the folder's largest weights shard (None: not sharded), so a sharded model stays so."""
    if not (folder / "model.safetensors.index.json").is_file():
        return None
    return max((p.stat().st_size for p in folder.glob("model-*.safetensors")), default=None)


def write_model_folder(net: nn.Module, source: Path, tokenizer_dir: Path, out: Path, card: str) -> Path:
    """Write `out`: `net` saved as transformers saves it (config.json, generation_config.json, safetensors weights,
    sharded as in `source`), the tokenizer files of `tokenizer_dir` copied as they are, and `card` as README.md."""
    out = Path(out)
    with atomic_folder(out) as work:
        shard = largest_shard(source)
        net.save_pretrained(work, **({"max_shard_size": shard} if shard else {}))
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, work / name)
        write_text(work / "README.md", card)
    return out
