"""Whole-file reads and writes through Beam FileSystems, so local paths and gs:// behave the same."""

from __future__ import annotations

import gzip

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def read_bytes(path: str) -> bytes:
    """The content of ``path``, gunzipped when the name ends in ``.gz``."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    return gzip.decompress(data) if path.endswith(".gz") else data


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as is (parent directories are created on local filesystems)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def match(pattern: str) -> list[str]:
    """Sorted paths matching a glob ``pattern`` (empty list when nothing matches)."""
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)
