"""Each party's own rows: the media party's user table, the ad party's splits in memory, and the batch order.

The batch order is a function of (seed, step) only, so both parties agree on step ``s`` after any restart.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfads.core.manifest import Manifest
from tfads.data import make_dataset
from tfads.datagen.media import MEDIA_KEY, TAG_FIELD


@dataclass
class MediaTable:
    """The media party's users: join keys (strings) and their features (float32 rows)."""

    keys: list[str]
    features: np.ndarray

    @classmethod
    def load(cls, path: str, *, key: str = MEDIA_KEY, field: str = TAG_FIELD) -> MediaTable:
        """Read a gzipped JSON-lines table of ``{key, field: [floats]}`` (``tfads datagen --media-features``).

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: a row without ``key`` or with a feature vector of another length (names the line).
        """
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path}: no media table here (`tfads datagen --media-features` writes one)")
        keys, rows = [], []
        with tf.io.gfile.GFile(path, "rb") as raw, gzip.open(raw, "rt") as f:
            for i, line in enumerate(f, 1):
                record = json.loads(line)
                if key not in record or not isinstance(record.get(field), list):
                    raise ValueError(f"{path}: line {i}: needs {key!r} and a list {field!r}")
                if rows and len(record[field]) != len(rows[0]):
                    raise ValueError(f"{path}: line {i}: {field} has {len(record[field])} values, not {len(rows[0])}")
                keys.append(str(record[key]))
                rows.append(record[field])
        return cls(keys, np.asarray(rows, np.float32).reshape(len(rows), -1))

    def rows_of(self, ordered_keys: list[str]) -> np.ndarray:
        """The feature rows of ``ordered_keys`` (e.g. the intersection in the agreed order)."""
        where = {k: i for i, k in enumerate(self.keys)}
        return self.features[[where[k] for k in ordered_keys]]


@dataclass
class Split:
    """One of the ad party's splits in memory: model inputs, labels and sample weights, row-aligned."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.labels.values())))

    def rows(self, idx: np.ndarray) -> Split:
        take = lambda d: {k: v[idx] for k, v in d.items()}  # noqa: E731
        return Split(take(self.features), take(self.labels), take(self.weights))


def load_split(manifest: Manifest, split: str, *, batch_size: int = 8192) -> Split:
    """The manifest's ``split`` read whole (file order), as :func:`tfads.data.make_dataset` yields it for training."""
    parts: list[tuple[dict, dict, dict]] = []
    for f, y, w in make_dataset(manifest.split_files(split), manifest, batch_size):
        parts.append(({k: v.numpy() for k, v in f.items()}, {k: v.numpy() for k, v in y.items()},
                      {k: v.numpy() for k, v in w.items()}))
    cat = lambda i: {k: np.concatenate([p[i][k] for p in parts]) for k in parts[0][i]}  # noqa: E731
    return Split(cat(0), cat(1), cat(2))


def media_index(keys: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """Position of each row's join key in the agreed order of the intersection, -1 without a match."""
    return np.array([index.get(str(k), -1) for k in keys], np.int64)


class BatchOrder:
    """Step ``s`` -> the row indices of its batch: epoch ``s // steps_per_epoch`` is a permutation drawn
    from ``(seed, epoch)``; the last partial batch of an epoch is dropped."""

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        if n_rows < batch_size:
            raise ValueError(f"federated: the train split has {n_rows} rows, fewer than batch_size {batch_size}")
        self.n, self.batch, self.seed = n_rows, batch_size, seed
        self.steps_per_epoch = n_rows // batch_size
        self._epoch, self._perm = -1, np.arange(0)

    def rows(self, step: int) -> np.ndarray:
        """Row indices of (1-based) ``step``."""
        epoch, i = divmod(step - 1, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm[i * self.batch : (i + 1) * self.batch]
