"""Whole-file reads and writes through Beam FileSystems, so local paths and gs:// behave the same."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def read_bytes(path: str) -> bytes:
    """The content of ``path``, gunzipped when the name ends in ``.gz``."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def read_line_pieces(path: str, piece_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line number, whole lines) of ``path`` in pieces of about ``piece_bytes`` decompressed bytes,
    streamed: memory holds one piece, not the file. Line numbers count from 1."""
    compression = CompressionTypes.GZIP if path.endswith(".gz") else CompressionTypes.UNCOMPRESSED
    first, rest = 1, b""
    with FileSystems.open(path, compression_type=compression) as f:
        while block := f.read(piece_bytes):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if not cut:
                rest = data
                continue
            piece, rest = data[:cut], data[cut:]
            yield first, piece
            first += piece.count(b"\n")
    if rest:
        yield first, rest


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as is (parent directories are created on local filesystems)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def match(pattern: str) -> list[tuple[str, int]]:
    """Sorted (path, size in bytes) of the files matching a glob ``pattern`` (empty when nothing matches)."""
    result = FileSystems.match([pattern])[0]
    return sorted((m.path, m.size_in_bytes) for m in result.metadata_list)
