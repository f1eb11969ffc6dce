"""The ad party's side of split learning: PSI with the media party, then step by step: send the batch's
matched rows, receive their embeddings, train the top model, send back the (clipped, noised) gradients
w.r.t. the embeddings; checkpoints on both sides every ``checkpoint_every`` steps; resume at the latest
step both parties saved.

The peer is anything with ``call(method, message) -> message`` and byte counters (``channel.Peer`` over gRPC,
or ``channel.LocalPeer`` in one process for tests and sweeps); each call past its deadline raises
:class:`~tfads.federated.channel.PeerLost` and training stops there, both checkpoints intact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.core.experiment import ModelConfig
from tfads.core.manifest import Manifest
from tfads.federated.config import SplitConfig
from tfads.federated.data import BatchOrder, Split, load_split, media_index
from tfads.federated.privacy import add_noise, clip_rows
from tfads.federated.psi import AdParty as PsiAd
from tfads.federated.psi import Intersection
from tfads.optimizers import make_optimizer
from tfads.federated.training import (TOP_OPTIMIZER, build_seeded_top, esmm_loss, full_embedding, metrics, predict,
                                      split_variables, top_inputs)

log = logging.getLogger(__name__)
EMBED_CHUNK = 16384  # rows per evaluation Embed call


@dataclass
class RunResult:
    """What :meth:`AdPartyTrainer.train` did."""

    start_step: int
    steps: int
    bytes_by_method: dict[str, int] = field(default_factory=dict)
    bytes_per_epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class AdPartyTrainer:
    """The label owner: its splits, the top model, the PSI result and the checkpoints under ``state_dir``."""

    def __init__(self, manifest: Manifest, model_cfg: ModelConfig, cfg: SplitConfig, state_dir: str, peer) -> None:
        if not manifest.user_key:
            raise ValueError("federated: the manifest names no user_key (the join key with the media party)")
        self.manifest, self.model_cfg, self.cfg, self.peer = manifest, model_cfg, cfg, peer
        self.train_split = load_split(manifest, "train")
        self.order = BatchOrder(len(self.train_split), cfg.batch_size, cfg.seed)
        self.top = build_seeded_top(manifest, model_cfg, cfg)
        self.variables = split_variables(self.top)
        self.optimizer = make_optimizer(TOP_OPTIMIZER, cfg.learning_rate)
        self.optimizer.build(self.variables[0])
        self.fusion_optimizer = keras.optimizers.Adam(cfg.media_learning_rate)
        self.fusion_optimizer.build(self.variables[1])
        self.checkpoints = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.top, optimizer=self.optimizer, fusion_optimizer=self.fusion_optimizer),
            os.path.join(state_dir, "ad"),
            max_to_keep=3, checkpoint_name="ckpt")
        if not self.checkpoints.checkpoints:
            self.checkpoints.save(checkpoint_number=0)
        self.step = 0
        self.intersection: Intersection | None = None
        self.position = np.zeros(0, np.int64)

    @property
    def total_steps(self) -> int:
        return self.order.steps_per_epoch * self.cfg.epochs

    def keys(self, split: Split) -> np.ndarray:
        return split.features[self.manifest.user_key]

    def align(self, extra_keys: np.ndarray | None = None) -> Intersection:
        """PSI on the user keys of the train split (and ``extra_keys``, e.g. the test split's); then the
        agreed resume step (both parties restore it)."""
        keys = self.keys(self.train_split)
        if extra_keys is not None:
            keys = np.concatenate([keys, extra_keys])
        psi = PsiAd(np.unique(keys).astype(str))
        reply = self.peer.call("PsiReply", {"ad_first": psi.first()}, wait_for_ready=True)
        media_double, self.intersection = psi.finish(list(reply["media_first"]), list(reply["ad_double"]))
        self.peer.call("PsiFinish", {"media_double": media_double})
        self.position = media_index(self.keys(self.train_split), self.intersection.index)
        hello = self.peer.call("Hello", {"ad_steps": np.asarray(self.saved_steps(), np.int64)})
        if int(hello["media_dim"]) != self.cfg.media_dim:
            raise ValueError(f"federated: the media party's media_dim is {int(hello['media_dim'])}, ours "
                             f"{self.cfg.media_dim}")
        self.restore(int(hello["step"]))
        log.info("PSI: %d of our %d users matched (media party has %d); resuming at step %d",
                 len(self.intersection.keys), self.intersection.own_size, self.intersection.other_size, self.step)
        return self.intersection

    def train(self, *, on_step: Callable[[int], None] | None = None) -> RunResult:
        """Train from the agreed step to ``epochs`` x steps per epoch; checkpoint both sides on the way.

        Raises:
          PeerLost: the media party did not answer (the last common checkpoint stays for a resume).
        """
        start, dim = self.step, self.cfg.media_dim
        privacy, n = self.cfg.privacy, self.cfg.batch_size
        for step in range(self.step + 1, self.total_steps + 1):
            rows = self.order.rows(step)
            position = self.position[rows]
            matched = position >= 0
            index = position[matched]
            reply = self.peer.call("Forward", {"step": np.int64(step), "index": index})
            batch = self.train_split.rows(rows)
            embedding = full_embedding(reply["embedding"], matched, dim)
            gradient = self._top_step(batch.features, embedding, matched.astype(np.float32), batch.labels,
                                      batch.weights).numpy()[matched]
            # each example's own loss gradient (the batch loss is a mean) clipped, noised, scaled back
            per_example = clip_rows(gradient * n, privacy.gradient_clip)
            per_example = add_noise(per_example, privacy.gradient_noise * privacy.gradient_clip,
                                    np.random.default_rng([self.cfg.seed, step, 2]))
            self.peer.call("Backward", {"step": np.int64(step), "index": index, "gradient": per_example / n})
            self.step = step
            if step % self.cfg.checkpoint_every == 0 or step == self.total_steps:
                self.checkpoint()
            if on_step:
                on_step(step)
        by_method = {m: self.peer.sent[m] + self.peer.received[m] for m in self.peer.sent}
        epochs = max((self.step - start) / self.order.steps_per_epoch, 1e-12)
        training = sum(by_method.get(m, 0) for m in ("Forward", "Backward", "Checkpoint"))
        return RunResult(start, self.step - start, by_method, training / epochs)

    @tf.function(reduce_retracing=True)
    def _top_step(self, features, embedding, matched, labels, weights) -> tf.Tensor:
        embedding = tf.convert_to_tensor(embedding)
        with tf.GradientTape() as tape:
            tape.watch(embedding)
            outputs = self.top(top_inputs(features, embedding, matched), training=True)
            loss = esmm_loss(outputs, labels, weights, self.model_cfg) + tf.add_n([0.0, *self.top.losses])
        base, fusion = self.variables
        grads = tape.gradient(loss, [*base, *fusion, embedding])
        self.optimizer.apply_gradients(zip(grads[: len(base)], base, strict=True))
        self.fusion_optimizer.apply_gradients(zip(grads[len(base) : -1], fusion, strict=True))
        return grads[-1]

    def checkpoint(self) -> None:
        """The media party saves this step first, then we do: a common step always exists."""
        self.peer.call("Checkpoint", {"step": np.int64(self.step)})
        self.checkpoints.save(checkpoint_number=self.step)

    def saved_steps(self) -> list[int]:
        return sorted(int(p.rsplit("-", 1)[1]) for p in self.checkpoints.checkpoints)

    def restore(self, step: int) -> None:
        self.checkpoints.checkpoint.restore(os.path.join(self.checkpoints.directory, f"ckpt-{step}")).assert_consumed()
        self.step = step

    def evaluate(self, split: Split) -> dict[str, float]:
        """Metrics on ``split`` (its users must have been in :meth:`align`'s keys): the media party embeds
        the matched rows (no noise), the rest get the default embedding."""
        position = media_index(self.keys(split), self.intersection.index)
        matched = position >= 0
        index = position[matched]
        parts = [self.peer.call("Embed", {"index": index[i : i + EMBED_CHUNK]})["embedding"]
                 for i in range(0, len(index), EMBED_CHUNK)]
        rows = np.concatenate(parts) if parts else np.zeros((0, self.cfg.media_dim), np.float32)
        embedding = full_embedding(rows, matched, self.cfg.media_dim)
        return metrics(predict(self.top, split, embedding, matched), split)

    def stop_peer(self) -> None:
        self.peer.call("Stop", {})
