"""Columnar ``tf.train.Example`` encoding and gzipped TFRecord writing, without importing TensorFlow.

An Example is ``Features{map<string, Feature>}``. A map entry's bytes depend only on the feature name and
its value: a header fixed by the value's encoded length, then the value. Each column is encoded once per
distinct value (vectorised with numpy over ragged byte buffers) and rows are byte concatenations.
The output parses with ``tf.train.Example.FromString`` like any other.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import google_crc32c
import numpy as np
import pandas as pd
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

KINDS = ("bytes", "int64", "float")
GZIP_LEVEL = 3  # zlib level 3: several times faster than the default 6 for ~10% larger shards
_FEATURE_TAG = {"bytes": 0x0A, "float": 0x12, "int64": 0x1A}


@dataclass(frozen=True)
class Ragged:
    """``n`` byte strings stored as one uint8 buffer and ``n + 1`` offsets."""

    data: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def to_list(self) -> list[bytes]:
        """The byte strings as Python objects."""
        raw = self.data.tobytes()
        return [raw[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def _from_lengths(data: np.ndarray, lengths: np.ndarray) -> Ragged:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(data, offsets)


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of ``n`` (negative numbers as 64-bit two's complement)."""
    r = varints(np.array([n], dtype=np.int64))
    return r.data.tobytes()


def varints(values: np.ndarray) -> Ragged:
    """Protobuf varints of int64 ``values`` (negatives as 64-bit two's complement), vectorised."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    nbytes = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    mat = np.empty((len(v), 10), dtype=np.uint8)
    for k in range(10):
        mat[:, k] = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        mat[:, k] |= np.where(k < nbytes - 1, 0x80, 0).astype(np.uint8)
    return _from_lengths(mat[np.arange(10) < nbytes[:, None]], nbytes)


def concat_rows(parts: Sequence[Ragged]) -> Ragged:
    """Row-wise concatenation: row i of the result is row i of each part, in order."""
    lengths = sum(p.lengths for p in parts)
    out = _from_lengths(np.empty(int(lengths.sum()), dtype=np.uint8), lengths)
    start = out.offsets[:-1].copy()
    for p in parts:
        plen = p.lengths
        if len(p.data):
            shift = np.repeat(start - p.offsets[:-1], plen)
            out.data[np.arange(p.offsets[0], p.offsets[-1]) + shift] = p.data[p.offsets[0]:p.offsets[-1]]
        start += plen
    return out


def take(table: list[bytes], index: np.ndarray) -> Ragged:
    """Row i = ``table[index[i]]`` (for small tables of headers)."""
    tlen = np.array([len(t) for t in table], dtype=np.int64)
    source = _from_lengths(np.frombuffer(b"".join(table), dtype=np.uint8), tlen)
    lengths = tlen[index]
    out = _from_lengths(np.empty(int(lengths.sum()), dtype=np.uint8), lengths)
    if len(out.data):
        shift = np.repeat(source.offsets[:-1][index] - out.offsets[:-1], lengths)
        out.data[:] = source.data[np.arange(len(out.data)) + shift]
    return out


def _payloads(kind: str, values: pd.Series) -> Ragged:
    """The raw value bytes of a column: UTF-8 text, int64 varints or little-endian float32."""
    if kind == "bytes":
        arr = pa.array(values, from_pandas=True)
        arr = (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.large_string())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
        return Ragged(data, offsets)
    if kind == "int64":
        return varints(values.to_numpy(dtype=np.int64))
    if kind == "float":
        raw = values.to_numpy(dtype=np.float64).astype("<f4").view(np.uint8)
        return _from_lengths(raw, np.full(len(values), 4, dtype=np.int64))
    raise ValueError(f"feature kind must be one of {KINDS}, got {kind!r}")


def _entry_header(name: bytes, kind: str, payload_len: int) -> bytes:
    """Bytes of a ``Features.feature`` map entry up to (excluding) a one-value payload of ``payload_len``."""
    inner_head = b"\x0a" + (varint(payload_len) if kind != "float" else b"\x04")
    feature_head = bytes([_FEATURE_TAG[kind]]) + varint(len(inner_head) + payload_len) + inner_head
    feature_len = len(feature_head) + payload_len
    body_head = b"\x0a" + varint(len(name)) + name + b"\x12" + varint(feature_len) + feature_head
    return b"\x0a" + varint(len(body_head) + payload_len) + body_head


def encode_column(name: str, kind: str, values: pd.Series) -> np.ndarray:
    """Per-row serialized map entries of one feature column (object array of bytes), built once per
    distinct value with numpy and looked up by the value's code."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    payload = _payloads(kind, pd.Series(uniques))
    distinct, index = np.unique(payload.lengths, return_inverse=True)
    key = name.encode("utf-8")
    headers = take([_entry_header(key, kind, int(n)) for n in distinct], index.reshape(-1))
    table = np.empty(len(uniques), dtype=object)
    table[:] = concat_rows([headers, payload]).to_list()
    return table[codes]


def _list_feature(kind: str, values: tuple) -> bytes:
    """A ``tf.train.Feature`` holding every one of ``values`` (an empty list for an empty tuple)."""
    if kind == "bytes":
        items = [str(v).encode("utf-8") for v in values]
        inner = b"".join(b"\x0a" + varint(len(v)) + v for v in items)
    else:
        packed = varints(np.asarray(values, dtype=np.int64)).data.tobytes() if values else b""
        inner = b"\x0a" + varint(len(packed)) + packed if values else b""
    return bytes([_FEATURE_TAG[kind]]) + varint(len(inner)) + inner


def encode_list_column(name: str, kind: str, values: pd.Series) -> np.ndarray:
    """Like :func:`encode_column` for a column of tuples (a list per row: ``tf.io.RaggedFeature`` /
    ``VarLenFeature`` parse it), encoded once per distinct tuple."""
    key = b"\x0a" + varint(len(name.encode("utf-8"))) + name.encode("utf-8")
    cache: dict[tuple, bytes] = {}
    out = np.empty(len(values), dtype=object)
    for i, row in enumerate(values):
        entry = cache.get(row)
        if entry is None:
            feature = _list_feature(kind, row)
            body = key + b"\x12" + varint(len(feature)) + feature
            entry = cache[row] = b"\x0a" + varint(len(body)) + body
        out[i] = entry
    return out


_LENGTH_VARINTS = varints(np.arange(1 << 14)).to_list()


def _varint_bytes(n: int) -> bytes:
    return _LENGTH_VARINTS[n] if n < len(_LENGTH_VARINTS) else varint(n)


def encode_examples(frame: pd.DataFrame, spec: Sequence[tuple[str, str]]) -> list[bytes]:
    """Serialized ``tf.train.Example`` per row of ``frame``; ``spec`` lists (column, kind) pairs; a kind ending in
    ``[]`` (``bytes[]``, ``int64[]``) is a column of tuples, a list of values per row."""
    columns = [encode_list_column(name, kind[:-2], frame[name]) if kind.endswith("[]")
               else encode_column(name, kind, frame[name]) for name, kind in spec]
    bodies = [b"".join(parts) for parts in zip(*columns, strict=True)] if columns else []
    return [b"\x0a" + _varint_bytes(len(b)) + b for b in bodies]  # Example.features: field 1, length-delimited


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(records: Iterable[bytes]) -> bytes:
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
            gz.write(tfrecords(records))

