"""One incremental update per shard: train from the serving model on the shard plus replayed history,
validate against the serving model on the shard's held-out rows, commit, export if it passed."""

from __future__ import annotations

import glob
import logging
import os
import shutil
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from serving.export import export_model, next_version
from tfads.calibration import AdaCalib, CalibStats
from tfads.calibration.combined import calibrated_tasks, split_calibrated, task_rows
from tfads.core.manifest import Manifest
from tfads.core.names import HEAD_LABELS
from tfads.finetune import embedding_layers
from tfads.models import build_model, compile_model
from tfads.jobs.online.calibration import refresh_stats
from tfads.jobs.online.config import OnlineConfig
from tfads.jobs.online.evaluation import Scorer, ctr_metrics, gate, records_dataset, split_holdout
from tfads.jobs.online.faults import crash_point
from tfads.jobs.online.recalibration import (
    calibrated_scores,
    export_view,
    read_layers,
    refit,
    write_layers,
)
from tfads.jobs.online.reservoir import Reservoir, read_records
from tfads.jobs.online.state import OnlineState, StateStore
from tfads.model_io import read_saved_experiment
from tfads.train import load_trained_model

log = logging.getLogger(__name__)


def calib_path(directory: str, task: str) -> str:
    return os.path.join(directory, f"calibration_stats_{task}.json")


class OnlineLearner:
    """Incremental learner over one trained model (``tfads train`` or ``tfads calibrate`` output in ``model_dir``).

    The state (weights, reservoir, consumed shards, metrics) lives under ``state_dir``; a learner
    built over an existing state continues from its last committed step. Accepted versions are exported
    under ``export_base`` (``None``: only counted in the state, for benchmarks). A ``tfads calibrate``
    model is split into its base, which the updates train, and its AdaCalib layers (``layers``).
    """

    def __init__(
        self, model_dir: str, manifest: Manifest, state_dir: str, export_base: str | None, config: OnlineConfig,
        *, model_name: str = "ctr",
    ) -> None:
        self.manifest, self.config = manifest, config
        self.export_base, self.model_name = export_base, model_name
        self.store = StateStore(state_dir)
        self.model, layers = split_calibrated(load_trained_model(model_dir), trainable_base=True)
        self.experiment = read_saved_experiment(model_dir)
        self.fields = config.calibration_fields or [n for n, f in manifest.features.items() if f.get("calibration")]
        for task, layer in layers.items():
            if missing := [f for f in layer.fields if f not in self.fields]:
                raise ValueError(f"{model_dir}: its {task} AdaCalib layer uses fields {missing}, which the online "
                                 f"calibration statistics do not refresh (calibration_fields: {self.fields})")
        if config.frozen_embeddings:
            for layer in embedding_layers(self.model):
                layer.trainable = False
        compile_model(self.model, self.experiment.model, self.learning_rate, self.experiment.train.optimizer)
        self.score = Scorer(self.model, manifest, self.fields)
        state = self.store.load()
        if state is None:
            state = self._initialise(layers)
        self.state = state
        self.model.load_weights(self.store.weights_prefix(state.weights_step)).expect_partial()
        self.serving_weights = self.model.get_weights()
        # the served calibration: the layers committed with the serving weights ({} for a plain model)
        self.layers = read_layers(self.store.step_dir(state.weights_step), list(layers))
        self._export_base = build_model(manifest, self.experiment.model) if self.layers and export_base else None
        step_dir = self.store.step_dir(state.step)
        self.reservoir = Reservoir.read(step_dir, config.reservoir_size, state.reservoir_seen)
        self.calib = {t: CalibStats.read(calib_path(step_dir, t)) if os.path.exists(calib_path(step_dir, t)) else None
                      for t in calibrated_tasks(self.model.output_names)}
        self.old_eval = read_records(manifest.split_files("valid"), limit=config.old_eval_examples)
        if config.recalibrate and not self.layers:
            log.info("%s holds no calibrated model: exporting the base model, nothing to recalibrate", model_dir)
        self.ensure_exported()

    @property
    def learning_rate(self) -> float:
        """The update learning rate: the experiment's rate x ``learning_rate_scale``."""
        return self.experiment.train.learning_rate * self.config.learning_rate_scale

    def _initialise(self, layers: dict[str, AdaCalib]) -> OnlineState:
        """Step 0: the trained model's weights, its AdaCalib layers and their statistics (if calibrated)
        and a reservoir seeded from the train split."""
        reservoir = Reservoir(self.config.reservoir_size)
        if self.config.seed_reservoir_from_train and self.config.replay_ratio > 0:
            history = read_records(self.manifest.split_files("train"), limit=10 * self.config.reservoir_size)
            reservoir.add(history, np.random.default_rng([self.config.seed, 0]))
        state = OnlineState(step=0, serving_version=self._next_version(None), reservoir_seen=reservoir.seen)

        def write(directory: str) -> None:
            self.model.save_weights(os.path.join(directory, "weights"))
            reservoir.write(directory)
            write_layers(directory, layers)
            for task, layer in layers.items():
                layer.stats.write(calib_path(directory, task))

        self.store.commit(state, write, keep=self.config.keep_steps)
        return state

    def _next_version(self, current: int | None) -> int:
        """The version an accepted update is exported as (counted in the state when nothing is exported)."""
        return next_version(self.export_base) if self.export_base else (current or 0) + 1

    def ensure_exported(self) -> str | None:
        """Export the serving model as ``serving_version`` unless that version already exists (or
        ``export_base`` is None); returns the version directory."""
        if self.export_base is None:
            return None
        path = os.path.join(self.export_base, str(self.state.serving_version))
        if os.path.isdir(path):
            return path
        for stale in glob.glob(os.path.join(self.export_base, f".tmp-{self.state.serving_version}-*")):
            shutil.rmtree(stale)  # a half-written export of this version from a killed run
        if self._export_base is None:
            base = self.model
            base.set_weights(self.serving_weights)
        else:  # by checkpoint, not set_weights: the weights' order follows the layers' trainable flags
            base = self._export_base
            base.load_weights(self.store.weights_prefix(self.state.weights_step)).expect_partial()
        card = {"online_step": self.state.weights_step, "consumed_shards": len(self.state.consumed),
                "calibration": {t: {"fields": layer.fields, "stats_impressions": layer.stats.global_stats.impressions}
                                for t, layer in self.layers.items()} or None}
        path = export_model(export_view(base, self.layers), self.manifest, self.export_base,
                            version=self.state.serving_version, model_name=self.model_name, card=card)
        crash_point("after_export")
        return path

    def update(self, shard: str, path: str) -> dict[str, Any]:
        """Consume one shard (``shard`` is its name relative to the stream); returns its metrics record."""
        cfg, state = self.config, self.state
        step = state.step + 1
        rng = np.random.default_rng([cfg.seed, step])
        records = read_records([path])
        train, held = split_holdout(records, cfg.holdout_fraction)
        if not train or not held:
            raise ValueError(f"{path}: shard too small to split ({len(records)} records)")
        replay = self.reservoir.sample(round(cfg.replay_ratio * len(train)), rng) if cfg.replay_ratio > 0 else []

        self.model.set_weights(self.serving_weights)
        before = {"newest": self.score(held), "old": self.score(self.old_eval)}
        serving = {data: ctr_metrics(s) for data, s in before.items()}
        loss = self._train(train + replay, seed=cfg.seed + step)
        crash_point("after_train")
        after = {"newest": self.score(held), "old": self.score(self.old_eval)}
        candidate = {data: ctr_metrics(s) for data, s in after.items()}
        accepted, gain = gate(candidate["newest"], serving["newest"], cfg.gate_metric, cfg.gate_margin)
        if not accepted:
            self.model.set_weights(self.serving_weights)
            after = before
        calibrated = {"serving_before": self._calibrated_metrics(before)} if self.layers else None
        scored = self.score(records)  # the model served after this step, on all the shard's rows
        self._refresh_calibration(scored, recalibrate=accepted and cfg.recalibrate, seed=cfg.seed + step)
        if calibrated:
            calibrated["served_after"] = self._calibrated_metrics(after)
        self.reservoir.add(train, rng)
        record = {"step": step, "shard": shard, "train_examples": len(train), "replay_examples": len(replay),
                  "heldout_examples": len(held), "train_loss": loss, "accepted": accepted,
                  "gate": {"metric": cfg.gate_metric, "gain": gain, "margin": cfg.gate_margin},
                  "candidate": candidate, "serving_before": serving,
                  **({"calibrated": calibrated, "recalibrated": accepted and cfg.recalibrate} if calibrated else {})}
        self.state = state.advance(
            consumed=[*state.consumed, shard],
            weights_step=step if accepted else state.weights_step,
            serving_version=self._next_version(state.serving_version) if accepted else state.serving_version,
            reservoir_seen=self.reservoir.seen,
            history=[*state.history, record],
        )
        self.store.commit(self.state, lambda d: self._write_step(d, accepted), keep=cfg.keep_steps)
        crash_point("after_commit")
        self.serving_weights = self.model.get_weights()
        if accepted:
            self.ensure_exported()
        log.info("step %d %s: %s (gain %+.4f) -> serving version %s", step, shard,
                 "accepted" if accepted else "rejected", gain, self.state.serving_version)
        return record

    def _refresh_calibration(self, scored: dict[str, np.ndarray], *, recalibrate: bool, seed: int) -> None:
        """Merge the shard's rows into the posterior statistics; with ``recalibrate`` rebuild and refit the
        AdaCalib layers from them on the same rows (as ``tfads calibrate`` fits on its statistics' split)."""
        for task in calibrated_tasks(self.model.output_names):
            label, _ = HEAD_LABELS[task]
            rows = task_rows(scored, task)
            if not rows.any():
                continue
            fields = {f: scored[f][rows] for f in self.fields}
            self.calib[task] = refresh_stats(self.calib[task], scored[task][rows], scored[label][rows], fields,
                                             decay=self.config.calibration_decay, task=task)
            if recalibrate and task in self.layers:
                self.layers[task] = refit(self.layers[task], self.calib[task], scored[task][rows], scored[label][rows],
                                          fields, epochs=self.config.recalibration_epochs, seed=seed)

    def _calibrated_metrics(self, scored: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
        """pCTR metrics of the served calibration on already-scored rows (by data name)."""
        return {data: ctr_metrics(calibrated_scores(self.layers, s)) for data, s in scored.items()}

    def _train(self, records: list[bytes], seed: int) -> float:
        """Fit from the current weights with a fresh optimizer state; returns the last epoch's loss."""
        keras.utils.set_random_seed(seed)
        for var in self.model.optimizer.variables:  # iterations and slots (not the learning rate)
            var.assign(tf.zeros_like(var))
        self.model.optimizer.learning_rate.assign(self.learning_rate)
        ds = records_dataset(records, self.manifest, self.config.batch_size, shuffle_seed=seed)
        history = self.model.fit(ds, epochs=self.config.epochs, verbose=0)
        return float(history.history["loss"][-1])

    def _write_step(self, directory: str, accepted: bool) -> None:
        if accepted:
            self.model.save_weights(os.path.join(directory, "weights"))
            write_layers(directory, self.layers)
        self.reservoir.write(directory)
        for task, stats in self.calib.items():
            if stats is not None:
                stats.write(calib_path(directory, task))
