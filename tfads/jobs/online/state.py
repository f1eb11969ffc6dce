"""Exactly-once bookkeeping: the consumed shards are committed together with the weights.

Layout under the state directory::

    steps/<NNNNNN>/        one committed step: state.json, reservoir, calibration stats and, when the
                           step changed the model, its weights (``weights.*``, a TF checkpoint)
    steps/.tmp-<NNNNNN>/   a step being written (never read)
    CURRENT                the number of the last committed step

A step is written completely into ``.tmp-N``, renamed to ``N`` and only then made current by
atomically replacing ``CURRENT``. A kill at any moment leaves ``CURRENT`` naming a complete step;
whatever came after it is discarded on restart, so the shards listed in that step's state are
exactly the shards whose training is in its weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tfads.jobs.online.faults import crash_point

POINTER = "CURRENT"
STEPS = "steps"
STATE_FILE = "state.json"
WEIGHTS = "weights"


@dataclass(frozen=True)
class OnlineState:
    """What one committed step knows.

    Attributes:
      step: this step's number (0 = the initial model, before any shard).
      consumed: stream shards (paths relative to the stream directory) in the order they were used.
      weights_step: the step whose directory holds the weights of the serving model, which the next
        update starts from (a rejected update keeps the previous one).
      serving_version: the export version of those weights under the export base.
      reservoir_seen: records ever offered to the reservoir.
      history: one metrics record per update.
    """

    step: int
    consumed: list[str] = field(default_factory=list)
    weights_step: int = 0
    serving_version: int | None = None
    reservoir_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def advance(self, **changes: Any) -> OnlineState:
        """The next step's state with ``changes``."""
        return replace(self, step=self.step + 1, **changes)


class StateStore:
    """Commits and loads :class:`OnlineState` steps under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.steps_dir = os.path.join(root, STEPS)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.steps_dir, f"{step:06d}")

    def weights_prefix(self, step: int) -> str:
        """Checkpoint prefix of a step's weights."""
        return os.path.join(self.step_dir(step), WEIGHTS)

    def current(self) -> int | None:
        """The last committed step, or None when nothing was committed yet."""
        path = os.path.join(self.root, POINTER)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())

    def load(self) -> OnlineState | None:
        """The last committed state; removes anything written after it by an interrupted commit."""
        step = self.current()
        if step is None:
            return None
        with open(os.path.join(self.step_dir(step), STATE_FILE), encoding="utf-8") as f:
            state = OnlineState(**json.load(f))
        for name in os.listdir(self.steps_dir):
            if name.startswith(".tmp-") or (name.isdigit() and int(name) > step):
                shutil.rmtree(os.path.join(self.steps_dir, name))
        return state

    def commit(self, state: OnlineState, write: Callable[[str], None], *, keep: int = 2) -> None:
        """Write ``state`` (and whatever ``write(directory)`` adds) as a new step, then make it current."""
        final = self.step_dir(state.step)
        tmp = os.path.join(self.steps_dir, f".tmp-{state.step:06d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write(tmp)
        _write_synced(os.path.join(tmp, STATE_FILE), json.dumps(asdict(state), indent=1))
        crash_point("before_rename")
        shutil.rmtree(final, ignore_errors=True)  # left by a commit that never reached the pointer
        os.rename(tmp, final)
        _sync_dir(self.steps_dir)
        crash_point("before_pointer")
        pointer = os.path.join(self.root, POINTER)
        _write_synced(pointer + ".tmp", str(state.step))
        os.replace(pointer + ".tmp", pointer)
        _sync_dir(self.root)
        self._prune(state, keep)

    def _prune(self, state: OnlineState, keep: int) -> None:
        """Drop step directories older than the last ``keep``, except the one holding the serving weights."""
        for name in os.listdir(self.steps_dir):
            if name.isdigit() and int(name) < state.step - keep and int(name) != state.weights_step:
                shutil.rmtree(os.path.join(self.steps_dir, name))


def _write_synced(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
