"""A bounded reservoir of past examples (serialized tf.Example records) for sample replay."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

FILE = "reservoir.tfrecord.gz"


class Reservoir:
    """Uniform sample (Vitter's algorithm R) of every record ever offered, at most ``capacity`` kept.

    ``seen`` counts the records offered so far; together with the records it is the whole state, so
    a reservoir written with :meth:`write` and read back continues exactly where it stopped (the
    random stream of each :meth:`add` call is seeded by the caller).
    """

    def __init__(self, capacity: int, records: list[bytes] | None = None, seen: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"Reservoir: `capacity` must be >= 1. Got {capacity}.")
        self.capacity = capacity
        self.records = list(records or [])[:capacity]
        self.seen = max(seen, len(self.records))

    def __len__(self) -> int:
        return len(self.records)

    def add(self, records: Iterable[bytes], rng: np.random.Generator) -> None:
        """Offer ``records``: each replaces a random kept one with probability capacity / seen."""
        for record in records:
            self.seen += 1
            if len(self.records) < self.capacity:
                self.records.append(record)
                continue
            slot = int(rng.integers(self.seen))
            if slot < self.capacity:
                self.records[slot] = record

    def sample(self, n: int, rng: np.random.Generator) -> list[bytes]:
        """``n`` records drawn without replacement (all of them when fewer are kept)."""
        if n >= len(self.records):
            return list(self.records)
        return [self.records[i] for i in rng.choice(len(self.records), size=n, replace=False)]

    def write(self, directory: str) -> None:
        """Write the records to ``<directory>/reservoir.tfrecord.gz`` (``seen`` lives in the step state)."""
        with tf.io.TFRecordWriter(os.path.join(directory, FILE), options="GZIP") as writer:
            for record in self.records:
                writer.write(record)

    @classmethod
    def read(cls, directory: str, capacity: int, seen: int) -> Reservoir:
        """Read a reservoir written by :meth:`write` (an absent file gives an empty reservoir)."""
        path = os.path.join(directory, FILE)
        records = read_records([path]) if os.path.exists(path) else []
        return cls(capacity, records, seen)


def read_records(files: list[str], limit: int | None = None) -> list[bytes]:
    """Serialized records of gzipped TFRecord ``files``, in order (at most ``limit``)."""
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        ds = ds.take(limit)
    return [bytes(r) for r in ds.as_numpy_iterator()]
