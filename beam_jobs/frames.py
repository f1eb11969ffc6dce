"""Pieces as compact bytes for the runner's shuffle: DataFrames as zstd-compressed Arrow IPC, raw lines
zstd-compressed.

The keyed graph moves parsed rows and examples between steps; pickled DataFrames of Python strings are
several times larger than the same columns as compressed Arrow buffers, and the shuffle's size is what a
runner holds (the DirectRunner: in memory) or bills (Dataflow Shuffle). ``unpack(pack(df))`` gives back
the same columns, dtypes and values.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

_CODEC = pa.Codec("zstd", compression_level=1)
_OPTIONS = pa.ipc.IpcWriteOptions(compression=_CODEC)
_LENGTH = 8  # bytes of the uncompressed length before a compressed blob


def pack(frame: pd.DataFrame) -> bytes:
    """``frame`` (default index) as an Arrow IPC stream."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pd.DataFrame:
    """The frame ``pack`` wrote."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pandas()


def compress(data: bytes) -> bytes:
    """``data`` zstd-compressed (level 1), prefixed with its length."""
    return len(data).to_bytes(_LENGTH, "little") + _CODEC.compress(data, asbytes=True)


def decompress(blob: bytes) -> bytes:
    """The bytes ``compress`` was given."""
    size = int.from_bytes(blob[:_LENGTH], "little")
    return _CODEC.decompress(blob[_LENGTH:], decompressed_size=size, asbytes=True) if size else b""
