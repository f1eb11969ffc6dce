"""Malformed lines for ``--corrupt-rate``: each corrupted line has exactly one problem, named by the
dead-letter reason code the Beam job must give it (see docs/architecture.md "Dead-letter reasons")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from tfads.core.schema import Schema

LINE_REASONS = ("bad_json", "missing_field", "wrong_type", "unknown_value", "out_of_range")


@dataclass(frozen=True)
class LogSpec:
    """What a valid line of one log looks like: field types, required fields, enums and ranges."""

    name: str
    types: dict[str, str]
    optional: tuple[str, ...] = ()
    enums: dict[str, list[str]] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    orphan_reason: str | None = None

    @property
    def reasons(self) -> list[str]:
        """Corruptions that apply to this log (``unknown_value`` only with enums, ...)."""
        out = ["bad_json", "missing_field", "wrong_type"]
        out += ["unknown_value"] if self.enums else []
        out += ["out_of_range"] if self.ranges else []
        return out + ([self.orphan_reason] if self.orphan_reason else [])

    @classmethod
    def for_impressions(cls, schema: Schema) -> LogSpec:
        """The impression log: every schema field, with its enum values and range."""
        return cls(
            "impressions",
            {n: f.type for n, f in schema.fields.items()},
            enums={n: f.values for n, f in schema.fields.items() if f.values},
            ranges={n: (f.min, f.max) for n, f in schema.fields.items() if f.min is not None or f.max is not None},
        )

    @classmethod
    def for_events(cls, schema: Schema, name: str, orphan_reason: str | None) -> LogSpec:
        """The clicks, conversions or feed log (types only)."""
        log = getattr(schema, name)
        return cls(name, dict(log.fields), tuple(log.optional), orphan_reason=orphan_reason)


def corrupt_line(line: bytes, reason: str, spec: LogSpec, rng: np.random.Generator) -> bytes:
    """Break one valid JSON line of ``spec``'s log in the way ``reason`` names, and only that way."""
    if reason == "bad_json":
        return line[: int(rng.integers(1, len(line)))]  # no proper prefix of an object is valid JSON
    obj = json.loads(line)

    def pick(names: list[str]) -> str:
        return names[int(rng.integers(len(names)))]

    if reason == "missing_field":
        del obj[pick([n for n in obj if n not in spec.optional])]
    elif reason == "wrong_type":
        name = pick(list(obj))
        obj[name] = 12345 if spec.types[name] == "string" else str(obj[name])
    elif reason == "unknown_value":
        name = pick(list(spec.enums))
        obj[name] = "__unknown__"
    elif reason == "out_of_range":
        name = pick(list(spec.ranges))
        lo, hi = spec.ranges[name]
        bad = hi + 1 if hi is not None and (lo is None or rng.random() < 0.5) else lo - 1
        obj[name] = int(bad) if spec.types[name] == "int" else float(bad) - 0.5
    else:
        raise ValueError(f"not a line corruption: {reason!r}")
    return json.dumps(obj, separators=(",", ":")).encode()
