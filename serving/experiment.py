"""The A/B switch: an experiment YAML of arms, deterministic user bucketing and hot reload.

An arm names the served model (name + version label, or a version number, or neither for the
latest) and its bidding parameters. A user lands in bucket ``hash(salt, user_id) % buckets``; each
arm owns a contiguous range of buckets proportional to its share, so assignment is stable across
processes and restarts and only changes when the salt or the shares change.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from serving.bidding import BiddingParams
from tfads.core.configtools import ConfigError, from_dict, read_yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One arm: its traffic share, the model it asks and how it bids."""

    name: str
    share: float
    model_name: str = "ctr"
    version_label: str | None = None
    version: int | None = None
    signature_name: str = "serving_default"
    bidding: BiddingParams = field(default_factory=BiddingParams)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.share) and 0.0 <= self.share <= 1.0):
            raise ValueError(f"arm {self.name!r}: share must be in [0, 1], got {self.share}")
        if self.version_label is not None and self.version is not None:
            raise ValueError(f"arm {self.name!r}: give version_label or version, not both")


@dataclass(frozen=True)
class Experiment:
    """Arms and the bucketing salt; shares must add up to 1. ``fallback_fields``: the fields whose
    posterior rates a candidate gets when the model does not answer, finest first (empty: no bid)."""

    name: str
    salt: str
    arms: list[Arm]
    buckets: int = 10_000
    fallback_fields: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("arms: give at least one arm")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: arm names must be unique, got {names}")
        total = sum(a.share for a in self.arms)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"arms: shares must add up to 1, got {total:g}")
        if self.buckets < len(self.arms):
            raise ValueError(f"buckets must be >= the number of arms, got {self.buckets}")

    def bucket(self, user_id: object) -> int:
        """The user's bucket in ``[0, buckets)``: a keyed hash of (salt, user_id)."""
        digest = hashlib.blake2b(f"{self.salt}\x1f{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.buckets

    def assign(self, user_id: object) -> Arm:
        """The arm of ``user_id`` (deterministic)."""
        bucket = self.bucket(user_id)
        bound = 0.0
        for arm in self.arms:
            bound += arm.share * self.buckets
            if bucket < round(bound):
                return arm
        return self.arms[-1]

    def arm(self, name: str) -> Arm:
        """The arm called ``name``.

        Raises:
          KeyError: no such arm (the message lists the arms).
        """
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"no arm {name!r} in experiment {self.name!r} (arms: {[a.name for a in self.arms]})")


def load_experiment_file(path: str | Path) -> Experiment:
    """Load and validate an experiment YAML.

    Raises:
      ConfigError: missing file, bad YAML, unknown key, wrong type or invalid value (names file and key).
    """
    return from_dict(Experiment, read_yaml(path), where=str(path))


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ExperimentWatcher:
    """The current experiment, reloaded when its file changes (mtime, size or inode).

    ``check()`` reloads on demand; ``start()`` runs it every ``poll_seconds`` on a daemon thread. A
    broken file is rejected with a logged error and the last good experiment stays in force.

    Raises (from ``__init__``):
      ConfigError: the initial file is missing or invalid.
    """

    def __init__(self, path: str | Path, *, poll_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self._signature = _signature(self.path)
        self._experiment = load_experiment_file(self.path)
        self.reloads = 0
        self.reload_errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def experiment(self) -> Experiment:
        """The experiment in force (the last one that loaded cleanly)."""
        return self._experiment

    def check(self) -> bool:
        """Reload if the file changed; True if a new experiment took effect."""
        with self._lock:
            signature = _signature(self.path)
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                experiment = load_experiment_file(self.path)
            except ConfigError as e:
                self.reload_errors += 1
                self.last_error = str(e)
                log.error("experiment reload rejected, keeping %r: %s", self._experiment.name, e)
                return False
            self._experiment = experiment
            self.reloads += 1
            self.last_error = None
            log.info("experiment reloaded from %s: %r, arms %s", self.path, experiment.name,
                     {a.name: a.share for a in experiment.arms})
            return True

    def start(self) -> ExperimentWatcher:
        """Poll the file on a daemon thread until ``stop()``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="experiment-watcher", daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        """Stop the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ExperimentWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
