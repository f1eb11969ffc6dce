"""``tfads schema infer``: write a starter ``input: table`` schema from a sample of CSV, Parquet or JSON-lines files."""

from __future__ import annotations

import argparse
import os
import sys

from tfads.core.names import CLICK
from tfads.cli.arg_types import positive_int

DESCRIPTION = """\
Read the first --sample-rows rows of the input files and write a starter schema (input: table) to edit:
each column's type (int, float, string) and feature kind (categorical when its values are few, hashed
with hash_bins for many-valued ids, numeric with min / log where the sample suggests them), the label
columns (0/1 with names like click, is_click, label, converted), the timestamp (int epoch seconds, or
a note that a date-time column must be converted), the key, the user key, and a domain suggestion.
Columns it cannot use are written commented out with the reason; a comment after every line gives the
sample counts behind the guess. Check it, then run `tfads build --schema OUT`.

Files: .csv, .csv.gz, .parquet, .pq, .jsonl, .jsonl.gz, .json (JSON lines), or any name with --format."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tfads schema``: one action, ``infer``."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")
    infer = actions.add_parser("infer", help="write a starter schema from a sample of a table's files",
                               description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    infer.add_argument("--input", required=True, nargs="+", action="extend", metavar="FILE_OR_GLOB",
                       help="files, globs (quote them) or directories; read in order until the sample is full")
    infer.add_argument("--out", required=True, help="the schema YAML to write")
    infer.add_argument("--sample-rows", type=positive_int, default=100_000,
                       help="rows to read, from the first files (default 100000)")
    infer.add_argument("--format", choices=("auto", "csv", "parquet", "jsonl"), default="auto",
                       help="file format (default auto: by extension); also written to the schema")
    infer.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    """Sample, guess, write; one ``error:`` line and 2 on bad input."""
    from tfads.schema_infer import SampleError, expand_inputs, infer_schema, read_sample, render_schema

    def fail(message: str) -> int:
        print(f"tfads schema {args.action}: error: {message}", file=sys.stderr)
        return 2

    if os.path.exists(args.out) and not args.force:
        return fail(f"{args.out} exists (an edited schema?): pass --force to overwrite it")
    try:
        sample = read_sample(expand_inputs(args.input), sample_rows=args.sample_rows, fmt=args.format)
    except SampleError as e:
        return fail(str(e))
    guess = infer_schema(sample.table)
    text = render_schema(guess, sample, fmt=args.format)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    except OSError as e:
        return fail(f"{args.out}: cannot write: {e.strerror or e}")
    kinds = ", ".join(f"{len(guess.features(k))} {k}" for k in ("categorical", "hashed", "numeric"))
    print(f"wrote {args.out} from {guess.rows} rows of {len(sample.files)} file(s): features {kinds}")
    labels = ", ".join(f"{role} {column}" for role, column in guess.labels.items() if column) or "none found"
    print(f"  labels: {labels}; timestamp: {guess.timestamp or 'none found'}; key: {guess.key or 'none'}; "
          f"user_key: {guess.user_key or 'none'}")
    for column in guess.skipped:
        print(f"  left out {column.name}: {column.reason}")
    todo = [t for t in (guess.timestamp_todo, None if guess.timestamp else guess.timestamp_reason,
                        None if guess.labels[CLICK] else guess.label_reason) if t]
    for item in todo:
        print(f"  TODO: {item}")
    print("  a starter: check every guess (the comments say what each rests on) before `tfads build`")
    return 0
