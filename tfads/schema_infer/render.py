"""Write a schema guess as YAML for ``input: table``, each guess followed by a comment saying what it rests on."""

from __future__ import annotations

import os

import yaml

from tfads.core.names import CLICK
from tfads.schema_infer.guess import HASH_FACTOR, LOG_SKEWNESS, MAX_CATEGORICAL, MAX_SMALL_INT, MIN_MEAN_COUNT, Guess
from tfads.schema_infer.sample import Sample

SPLITS = {"valid_days": 1, "calib_days": 1, "test_days": 1, "shards_per_day": "auto"}
VOCAB = {"min_count": 1, "top_k": 100_000}


def _flow(value: object) -> str:
    """``value`` as one line of YAML (flow style; scalars quoted only when YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return text.removesuffix("...").strip()


def _line(text: str, comment: str = "", width: int = 0) -> str:
    return f"{text.ljust(width)}   # {comment}" if comment else text


def _header(guess: Guess, sample: Sample) -> list[str]:
    files = [os.path.basename(f) for f in sample.files]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    formats = ", ".join(sorted(set(sample.formats)))
    full = "" if guess.rows < sample.sample_rows else f" (--sample-rows {sample.sample_rows})"
    return [
        "# STARTER schema written by `tfads schema infer`: guesses from a sample, to check and edit before",
        "# `tfads build`. Nothing here was verified on the full data.",
        f"# Sample: the first {guess.rows} rows{full} of {len(files)} file(s): {shown} ({formats}).",
        "# How each guess was made (the comment after each line gives the sample's counts behind it):",
        "#   type: int if every value is an integer, float if every value is a number, else string;",
        f"#   categorical: <= {MAX_CATEGORICAL} distinct values, each seen >= {MIN_MEAN_COUNT:g} times on average "
        f"(ints without an id-like name: <= {MAX_SMALL_INT} values);",
        f"#   hashed: id-like columns with more; hash_bins = a power of two >= {HASH_FACTOR}x the SAMPLE's "
        "distinct count;",
        f"#   numeric: floats and other ints; min: 0 when no value is negative; log: true when skewness > "
        f"{LOG_SKEWNESS:g};",
        "#   labels: 0/1 columns with label-like names; timestamp: int epoch seconds (or a time-like name);",
        "#   key: an id-like column unique in the sample; user_key: a user-like name.",
        "# Columns that could not be used are left commented out under fields with the reason.",
    ]


def render_schema(guess: Guess, sample: Sample, *, fmt: str = "auto") -> str:
    """The YAML text of ``guess``: an ``input: table`` schema in the format ``tfads.core.schema`` loads.

    Args:
      guess: from ``infer_schema``.
      sample: the sample it was made from (files, row counts for the header).
      fmt: the ``format`` to write (``auto``: by file extension, as the files were read).
    """
    lines = _header(guess, sample) + ["", "input: table", _line(f"format: {fmt}", "auto: by file extension")]
    if guess.key:
        lines.append(_line(f"key: {_flow(guess.key)}", guess.key_reason))
    else:
        lines.append(f"# key: none; {guess.key_reason}")
    if guess.timestamp:
        todo = f"; TODO: {guess.timestamp_todo}" if guess.timestamp_todo else ""
        lines.append(_line(f"timestamp: {_flow(guess.timestamp)}", guess.timestamp_reason + todo))
    else:
        lines.append(_line("timestamp: null", f"TODO: {guess.timestamp_reason}"))
    if guess.user_key:
        lines.append(_line(f"user_key: {_flow(guess.user_key)}", guess.user_reason))
    else:
        lines.append(f"# user_key: none; {guess.user_reason}")
    if guess.domain:
        lines.append(f"# domain: {_flow(guess.domain)}   # a guess ({guess.domain_reason}): to use it, uncomment "
                     "and add domain_aware: true to its field")
    else:
        lines.append(f"# domain: none guessed ({guess.domain_reason}); optional")
    lines.append("fields:")
    entries = [(f"{_flow(c.name)}:", _flow(c.spec) if c.spec else "", c) for c in guess.columns]
    name_width = max((len(n) for n, _, _ in entries), default=0)
    width = name_width + max((len(s) for _, s, _ in entries), default=0) + 3
    for name, spec, column in entries:
        if column.left_out:
            lines.append(_line(f"  # {name.ljust(name_width)} {spec}", f"left out: {column.reason}", width))
        else:
            lines.append(_line(f"  {name.ljust(name_width)} {spec}", column.reason, width))
    labels = _flow(guess.labels)
    lines.append(_line(f"labels: {labels}", guess.label_reason if guess.labels[CLICK] else
                       f"TODO: {guess.label_reason}"))
    days = ""
    if guess.days is not None:
        days = f"; the sample spans {guess.days[2]} day(s), {guess.days[0]} .. {guess.days[1]}"
    need = sum(v for k, v in SPLITS.items() if k.endswith("_days")) + 1
    lines.append(_line(f"splits: {_flow(SPLITS)}", f"by UTC day of the timestamp: the data needs >= {need} days"
                       + days))
    lines.append(_line(f"vocab: {_flow(VOCAB)}", "values seen fewer than min_count times in train share the "
                       "OOV bucket"))
    return "\n".join(lines) + "\n"
