"""Columnar ``tf.train.Example`` encoding and gzipped TFRecord writing, without importing TensorFlow.

An Example is ``Features{map<string, Feature>}``; a map entry's bytes depend only on the feature name
and its value, so each column is encoded once per distinct value and rows are byte concatenations.
The output parses with ``tf.train.Example.FromString`` / ``tf.io.parse_example`` like any other.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Sequence

import google_crc32c
import numpy as np
import pandas as pd
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

KINDS = ("bytes", "int64", "float")
GZIP_LEVEL = 3  # zlib level 3: about 3x faster than the default 6 for ~10% larger shards


def _varint_slow(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


_VARINTS = [_varint_slow(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of ``n`` (negative numbers as 64-bit two's complement)."""
    return _VARINTS[n] if 0 <= n < len(_VARINTS) else _varint_slow(n)


def _feature(kind: str, value: object) -> bytes:
    """Serialized ``tf.train.Feature`` holding one value."""
    if kind == "bytes":
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        inner, tag = b"\x0a" + varint(len(raw)) + raw, b"\x0a"
    elif kind == "int64":
        payload = varint(int(value))
        inner, tag = b"\x0a" + varint(len(payload)) + payload, b"\x1a"
    elif kind == "float":
        inner, tag = b"\x0a\x04" + struct.pack("<f", float(value)), b"\x12"
    else:
        raise ValueError(f"feature kind must be one of {KINDS}, got {kind!r}")
    return tag + varint(len(inner)) + inner


def _entry(name: bytes, feature: bytes) -> bytes:
    """One ``Features.feature`` map entry (field 1 of Features), tag and length included."""
    body = b"\x0a" + varint(len(name)) + name + b"\x12" + varint(len(feature)) + feature
    return b"\x0a" + varint(len(body)) + body


def encode_column(name: str, kind: str, values: np.ndarray | pd.Series) -> np.ndarray:
    """Per-row serialized map entries for one feature column (object array of bytes)."""
    codes, uniques = pd.factorize(np.asarray(values), use_na_sentinel=False)
    key = name.encode("utf-8")
    table = np.empty(len(uniques), dtype=object)
    table[:] = [_entry(key, _feature(kind, u)) for u in uniques]
    return table[codes]


def encode_examples(frame: pd.DataFrame, spec: Sequence[tuple[str, str]]) -> list[bytes]:
    """Serialized ``tf.train.Example`` per row of ``frame``; ``spec`` lists (column, kind) pairs."""
    columns = [encode_column(name, kind, frame[name].to_numpy()) for name, kind in spec]
    bodies = [b"".join(parts) for parts in zip(*columns, strict=True)] if columns else []
    return [b"\x0a" + varint(len(b)) + b for b in bodies]


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_tfrecords(records: Iterable[bytes]) -> bytes:
    """TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    pack_q, pack_i = struct.Struct("<Q").pack, struct.Struct("<I").pack
    parts = []
    for r in records:
        head = pack_q(len(r))
        parts += (head, pack_i(_masked_crc(head)), r, pack_i(_masked_crc(r)))
    return b"".join(parts)


def write_tfrecord_gz(path: str, records: Iterable[bytes], *, level: int = GZIP_LEVEL) -> None:
    """Write ``records`` as one gzipped TFRecord file at ``path`` (any Beam filesystem, e.g. gs://)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz:
            gz.write(frame_tfrecords(records))

