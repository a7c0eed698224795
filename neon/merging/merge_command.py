"""`neon-merge BASE AUX --w 0.8 -o OUT`: stream θ_neon from two checkpoint files of any format neon reads, or from
two model folders (transformers' `save_pretrained` layout) into a folder."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from neon.core.errors import NeonError
from neon.merging.extrapolate import WSpec, check_w, merge_files
from neon.merging.model_folders import folder_merge_wanted, merge_model_folders


def parse_w(text: str) -> WSpec:
    """A number (`0.8`) or a JSON mapping from name patterns to numbers (`{"enc": 0.5, "default": 1}`)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise NeonError(f"--w must be a number or a JSON mapping, got '{text}'") from None
    return check_w(value)


def check_output(out: str, inputs: list[str], overwrite: bool) -> None:
    """Refuse an output path that is one of the inputs (it would be replaced while being read)."""
    target = Path(out)
    for path in inputs:
        src = Path(path)
        same = target.exists() and src.exists() and target.samefile(src)
        if (same or target.resolve() == src.resolve()) and not overwrite:
            raise NeonError(f"output '{out}' is the input '{path}': writing it would replace that checkpoint; "
                            "give another -o path (or --overwrite to replace it on purpose)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `neon-merge` command."""
    parser = argparse.ArgumentParser(
        prog="neon-merge",
        description="Write θ_neon = (1 + w)·BASE − w·AUX, streaming key by key.",
    )
    parser.add_argument("base", help="θ_r: the base checkpoint (.safetensors or its sharded index, a torch state "
                        "dict, a Lightning .ckpt, a training checkpoint, an NVIDIA .pkl snapshot), or a model "
                        "folder (config.json + safetensors weights, sharded or not)")
    parser.add_argument("aux", help="θ_s: the checkpoint fine-tuned on the model's own samples")
    parser.add_argument("--w", required=True, help="merge weight: a number, or a JSON {pattern: w} mapping")
    parser.add_argument("-o", "--out", required=True, help="output file (.safetensors, .ckpt or .pt), or a new "
                        "folder when BASE and AUX are model folders (BASE's files with the merged weights)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="in training checkpoints holding both, merge the EMA ('model_ema') or raw ('model') weights")
    parser.add_argument("--overwrite", action="store_true", help="allow -o to name one of the inputs (replaces it)")
    args = parser.parse_args(argv)
    # the block-wise pattern counts (and warnings) go to stderr; the output path alone to stdout. The handler
    # sits on neon's logger for this call only: main() called in-process leaves the caller's logging as it was
    logger = logging.getLogger("neon")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("neon-merge: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        check_output(args.out, [args.base, args.aux], args.overwrite)
        if folder_merge_wanted(args.base, args.aux, args.out):
            out = merge_model_folders(args.base, args.aux, parse_w(args.w), args.out)
        else:
            out = merge_files(args.base, args.aux, parse_w(args.w), args.out, weights=args.weights)
    except NeonError as exc:
        print(f"neon-merge: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    print(out)


if __name__ == "__main__":
    main()
