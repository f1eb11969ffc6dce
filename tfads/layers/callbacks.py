"""Keras callbacks that drive AdaSparse's training schedules (the slope alpha and the regulariser's lambda) and
early stopping that keeps a validation inside the sparsity range.

The schedules are functions of the optimizer's step counter, so a run resumed by ``BackupAndRestore`` (or a
warm start) continues the schedule where it stopped, and both write non-trainable variables that are
saved with the model, so inference uses the final values and never changes them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tf_keras as keras

from tfads.layers.adasparse import PRUNED_SHARE_SUFFIX, AdaSparsePruner, find_pruners


class _PrunerSchedule(keras.callbacks.Callback):
    """Sets one variable of every pruner from the optimizer step before each training batch.

    The step is read from ``optimizer.iterations`` once per epoch (a device sync) and advanced by the
    batch index within the epoch, so batches do not wait for the previous step to finish.
    """

    def __init__(self) -> None:
        super().__init__()
        # reads no logs: Keras then passes them unconverted, and allows the schedule under parameter servers
        # (which refuse batch-level callbacks that need the logs as numbers)
        self._supports_tf_logs = True
        self._pruners: list[AdaSparsePruner] = []
        self._epoch_step: int | None = None  # optimizer step at the epoch's first batch
        self._epoch_batch = 0  # index of the epoch's first batch (> 0 when resumed mid-epoch)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._pruners = [p for p in find_pruners(self.model) if self._applies_to(p)]
        if not self._pruners:
            raise ValueError(f"{type(self).__name__}: the model has no AdaSparsePruner this schedule applies to.")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_step = None

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._epoch_step is None:
            self._epoch_step, self._epoch_batch = int(self.model.optimizer.iterations.numpy()), batch
        step = self._epoch_step + batch - self._epoch_batch
        for p in self._pruners:
            self._assign(p, step)

    def _applies_to(self, pruner: AdaSparsePruner) -> bool:
        return pruner.prunes

    def _assign(self, pruner: AdaSparsePruner, step: int) -> None:
        raise NotImplementedError


class AlphaAnnealer(_PrunerSchedule):
    """Anneals every pruner's slope ``alpha`` from ``start`` to ``end`` over ``total_steps`` optimizer steps.

    ``alpha(t) = start * (end / start) ** min(t / total_steps, 1)`` (geometric: the slope multiplies by a
    constant factor per step, so the early, soft phase and the late, near-step phase get equal time on a
    log scale), or linear with ``schedule="linear"``. After ``total_steps`` alpha stays at ``end``.

    Args:
      start, end: first and final alpha (paper: 0.1 -> 5).
      total_steps: steps over which to anneal; None uses ``epochs * steps`` from ``fit``.
      schedule: "geometric" or "linear".
    """

    def __init__(
        self, start: float = 0.1, end: float = 5.0, total_steps: int | None = None, schedule: str = "geometric"
    ) -> None:
        super().__init__()
        if schedule not in ("geometric", "linear"):
            raise ValueError(f"AlphaAnnealer: `schedule` must be 'geometric' or 'linear'. Received: {schedule!r}.")
        if start <= 0 or end <= 0:
            raise ValueError(f"AlphaAnnealer: alpha must be positive. Received: start={start}, end={end}.")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"AlphaAnnealer: `total_steps` must be positive. Received: {total_steps}.")
        self.start, self.end, self.total_steps, self.schedule = float(start), float(end), total_steps, schedule
        self._total = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self.total_steps is not None:
            self._total = self.total_steps
            return
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if not epochs or not steps:
            raise ValueError("AlphaAnnealer: the number of steps is unknown; pass `total_steps`.")
        self._total = int(epochs) * int(steps)

    def alpha_at(self, step: int) -> float:
        """The scheduled alpha at optimizer step ``step``."""
        frac = min(step / self._total, 1.0) if self._total else 1.0
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * frac
        return self.start * (self.end / self.start) ** frac

    def _assign(self, pruner: AdaSparsePruner, step: int) -> None:
        pruner.alpha.assign(self.alpha_at(step))


class SparsityLambdaScheduler(_PrunerSchedule):
    """Grows every pruner's ``lambda_hat`` geometrically: ``lambda_init * growth ** (t / growth_steps)``.

    Capped at ``max_lambda``. The regulariser is zero while a layer's sparsity is inside its range, so a
    large lambda only acts on layers that leave it, pulling them back harder the longer training runs.

    Args:
      growth: multiplier per ``growth_steps`` optimizer steps (> 1).
      growth_steps: steps per multiplication.
      max_lambda: upper bound of lambda_hat.
    """

    def __init__(self, growth: float = 2.0, growth_steps: int = 1000, max_lambda: float = 10.0) -> None:
        super().__init__()
        if growth < 1.0:
            raise ValueError(f"SparsityLambdaScheduler: `growth` must be >= 1. Received: growth={growth}.")
        if growth_steps <= 0:
            raise ValueError(f"SparsityLambdaScheduler: `growth_steps` must be positive. Received: {growth_steps}.")
        self.growth, self.growth_steps, self.max_lambda = float(growth), int(growth_steps), float(max_lambda)

    def lambda_at(self, lambda_init: float, step: int) -> float:
        """The scheduled lambda_hat at optimizer step ``step`` for a pruner starting at ``lambda_init``."""
        exponent = step / self.growth_steps * math.log(self.growth)
        return min(self.max_lambda, lambda_init * math.exp(min(exponent, 700.0)))

    def _assign(self, pruner: AdaSparsePruner, step: int) -> None:
        pruner.lambda_hat.assign(self.lambda_at(pruner.lambda_init, step))


class InRangeEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping with restore-best that, once a validation has every AdaSparse layer inside its sparsity
    range, keeps only such validations as the best.

    Restore-best alone can keep weights from before the schedules pulled the layers into
    ``[r_min, r_max]`` (on small data the best validation can come early). A validation counts as in range when
    every ``val_<pruner>_pruned_share`` of the logs lies in ``[r_min - tolerance, r_max + tolerance]``. Until the
    first such validation the run does not stop (the epochs cap still ends it); that validation replaces any
    earlier best, and later out-of-range ones count towards patience but never become the best. A model without
    pruners (no such logs) behaves as :class:`keras.callbacks.EarlyStopping`.
    """

    def __init__(self, r_min: float, r_max: float, *, tolerance: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= r_min <= r_max < 1.0:
            raise ValueError(f"InRangeEarlyStopping: need 0 <= r_min <= r_max < 1. Received: {r_min}, {r_max}.")
        self.r_min, self.r_max, self.tolerance = float(r_min), float(r_max), float(tolerance)
        self.reached = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self.reached = False

    def in_range(self, logs: dict[str, Any]) -> bool | None:
        """Whether every pruning layer's validation share is in range (None: the logs have none)."""
        shares = [v for k, v in logs.items() if k.startswith("val_") and k.endswith(PRUNED_SHARE_SUFFIX)]
        if not shares:
            return None
        return all(self.r_min - self.tolerance <= s <= self.r_max + self.tolerance for s in shares)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        eligible = self.in_range(logs)
        if eligible and not self.reached:  # the first validation in range: earlier bests no longer count
            self.reached = True
            self.best = np.inf if self.monitor_op == np.less else -np.inf
            self.best_weights = None
        if eligible is False and self.reached and self.get_monitor_value(logs) is not None:
            self.wait += 1  # counts towards patience, never a best
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
            return
        super().on_epoch_end(epoch, logs)
        if eligible is False and not self.reached:  # not in range yet: keep training
            self.model.stop_training, self.stopped_epoch = False, 0
