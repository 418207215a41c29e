"""Criteo click logs: a streaming reader for the raw TSV, and a synthetic generator with a planted signal.

python -m runtime.data synth writes synthetic Criteo TSV; check counts lines, bad lines and the label rate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runtime.data.criteo import CriteoReader, DataError, add_format_arguments
from runtime.data.synthetic import synth
from runtime.model.config import DLRMConfig


def _config_from_args(args: argparse.Namespace) -> DLRMConfig:
    if args.config == "small":
        return DLRMConfig.small()
    return DLRMConfig.kaggle(None if args.max_table_size <= 0 else args.max_table_size)


def _check(args: argparse.Namespace) -> int:
    reader = CriteoReader(args.files, _config_from_args(args), 4096, max_bad_fraction=1.0, layout=args.layout,
                          file_format=args.file_format)
    examples = positives = 0
    for batch in reader:
        examples += len(batch)
        positives += int(batch.labels.sum())
    print(f"lines: {reader.lines}")
    print(f"bad lines: {reader.bad_lines}")
    for path, line_no, reason in reader.bad_examples:
        print(f"  {path}:{line_no}: {reason}")
    if reader.bad_lines > len(reader.bad_examples):
        print(f"  ... {reader.bad_lines - len(reader.bad_examples)} more")
    rate = f"{positives / examples:.4f} ({positives} of {examples})" if examples else "n/a (no valid lines)"
    print(f"label rate: {rate}")
    return 1 if reader.bad_lines else 0


def _synth(args: argparse.Namespace) -> int:
    paths = synth(args.out, args.rows, args.seed, noise=args.noise, config=_config_from_args(args),
                  partitions=args.partitions, max_vocab=args.max_vocab)
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", choices=("kaggle", "small"), default="kaggle",
                       help="table sizes for the row mapping (default: kaggle)")
        p.add_argument("--max-table-size", type=int, default=100_000,
                       help="cap on Kaggle table sizes, <= 0 for none (default 100000)")

    p_synth = sub.add_parser("synth", help="write synthetic Criteo TSV with a planted signal")
    p_synth.add_argument("--rows", type=int, required=True)
    p_synth.add_argument("--seed", type=int, required=True)
    p_synth.add_argument("--out", required=True, help="output file (with --partitions K: FILE.0 .. FILE.K-1)")
    p_synth.add_argument("--partitions", type=int, default=1)
    p_synth.add_argument("--noise", type=float, default=0.5, help="std of the logit noise (default 0.5)")
    p_synth.add_argument("--max-vocab", type=int, default=10_000, help="distinct values per column (default 10000)")
    add_config_args(p_synth)
    p_synth.set_defaults(run=_synth)

    p_check = sub.add_parser("check", help="count lines, bad lines (with reasons) and the label rate")
    p_check.add_argument("files", nargs="+")
    add_format_arguments(p_check)
    add_config_args(p_check)
    p_check.set_defaults(run=_check)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
