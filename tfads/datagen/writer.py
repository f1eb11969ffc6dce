"""Byte-stable output of ``tfads datagen``: trace ids, JSON lines from columns, gzip with mtime 0."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def trace_ids(seed: int, index: np.ndarray) -> np.ndarray:
    """16-hex-digit trace ids for integer ``index`` values: a bijection of uint64 (splitmix64's
    finaliser over ``index`` plus a seed offset), so distinct indices never collide."""
    x = index.astype(np.uint64) + np.uint64(((seed + 1) * 0x9E3779B97F4A7C15) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    x = x ^ (x >> np.uint64(31))
    b = x.astype(">u8").view(np.uint8).reshape(-1, 8)
    out = np.empty((len(x), 16), np.uint8)
    out[:, 0::2], out[:, 1::2] = _HEX[b >> 4], _HEX[b & 15]
    return out.view("S16").ravel().astype(str)


def json_lines(df: pd.DataFrame, optional: tuple[str, ...] = ()) -> list[bytes]:
    """One compact JSON object per row (columns in order); NaN in an ``optional`` column omits the key."""
    if df.empty:
        return []
    # One JSON array, then one object per line: faster than pandas' own lines=True, and safe because
    # no generated value contains a brace.
    text = df.to_json(orient="records", double_precision=8)[1:-1].replace("},{", "}\n{")
    for name in optional:
        text = text.replace(f',"{name}":null', "").replace(f'"{name}":null,', "")
    return text.encode().splitlines()


def write_gz(path: Path, lines: list[bytes]) -> None:
    """Write lines to a gzip file deterministically (no file name, mtime 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"\n".join(lines) + b"\n" if lines else b""
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=2) as gz:
            gz.write(data)
