"""The media party's side of split learning: PSI answers, the bottom model's forward and backward passes,
checkpoints at steps the ad party names, and the agreed resume step.

:meth:`MediaService.handlers` maps the channel's methods to functions of a message (:mod:`.channel`):

  PsiReply    {ad_first}            -> {media_first, ad_double}
  PsiFinish   {media_double}        -> {size}                      the intersection, in the agreed order
  Hello       {ad_steps}            -> {step, media_dim, media_steps}  both restore ``step``: the latest
                                                                   checkpoint both have
  Forward     {step, index}         -> {embedding}                 ``step`` must be the next one; noised
  Backward    {step, index, gradient} -> {step}                    the gradient w.r.t. the sent embedding
  Embed       {index}               -> {embedding}                 evaluation: clipped, no noise
  Checkpoint  {step}                -> {step}
  Stop        {}                    -> {}
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfads.federated.channel import Handler, Message
from tfads.federated.config import SplitConfig
from tfads.federated.data import MediaTable
from tfads.federated.models import build_bottom
from tfads.federated.privacy import add_noise
from tfads.federated.psi import MediaParty

log = logging.getLogger(__name__)


def _strings(x: np.ndarray) -> list[bytes]:
    return [bytes(v) for v in np.asarray(x, dtype=object).ravel()]


class MediaService:
    """The media party: its table, its bottom model and optimizer, checkpoints under ``state_dir``.

    The model is built with ``keras.utils.set_random_seed(cfg.seed)`` first, so a party built from the same
    config starts from the same weights (the one-process reference does the same)."""

    def __init__(self, table: MediaTable, cfg: SplitConfig, state_dir: str) -> None:
        self.table, self.cfg, self.privacy = table, cfg, cfg.privacy
        keras.utils.set_random_seed(cfg.seed)
        self.bottom = build_bottom(table.features.shape[1], cfg.bottom_units, cfg.media_dim,
                                   cfg.privacy.embedding_clip)
        self.optimizer = keras.optimizers.Adam(cfg.media_learning_rate)
        self.optimizer.build(self.bottom.trainable_variables)
        self.checkpoints = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.bottom, optimizer=self.optimizer), os.path.join(state_dir, "media"),
            max_to_keep=3, checkpoint_name="ckpt")
        if not self.checkpoints.checkpoints:
            self.checkpoints.save(checkpoint_number=0)
        self.step = 0
        self.rows: np.ndarray | None = None  # feature rows in the agreed order of the intersection
        self._psi: MediaParty | None = None
        self._pending: int | None = None
        self.stopped = threading.Event()
        self.last_call = time.monotonic()

    # ------------------------------------------------------------------ alignment
    def psi_reply(self, msg: Message) -> Message:
        self._psi = MediaParty(self.table.keys)
        media_first, ad_double = self._psi.reply(_strings(msg["ad_first"]))
        return {"media_first": media_first, "ad_double": ad_double}

    def psi_finish(self, msg: Message) -> Message:
        if self._psi is None:
            raise ValueError("PsiFinish before PsiReply")
        result = self._psi.finish(_strings(msg["media_double"]))
        self.rows = self.table.rows_of(result.keys)
        log.info("PSI: %d of our %d users are in the ad party's %d", len(result.keys), result.own_size,
                 result.other_size)
        return {"size": np.int64(len(result.keys))}

    def hello(self, msg: Message) -> Message:
        """Restore the latest checkpoint both parties have; the ad party then restores the same step."""
        if self.rows is None:
            raise ValueError("Hello before PSI")
        ours = self.saved_steps()
        common = sorted(set(ours) & {int(s) for s in np.ravel(msg["ad_steps"])})
        if not common:
            raise ValueError(f"no common checkpoint: media party has steps {ours}, ad party {msg['ad_steps'].tolist()}")
        self.restore(common[-1])
        return {"step": np.int64(self.step), "media_dim": np.int64(self.cfg.media_dim),
                "media_steps": np.asarray(ours, np.int64)}

    # ------------------------------------------------------------------ training
    def forward(self, msg: Message) -> Message:
        step = int(msg["step"])
        if step != self.step + 1:
            raise ValueError(f"Forward for step {step}, but the media party's next step is {self.step + 1}")
        self._pending = step
        embedding = self.bottom(self._features(msg["index"]), training=True).numpy()
        noise = self.privacy.embedding_noise * self.privacy.embedding_clip
        return {"embedding": add_noise(embedding, noise, np.random.default_rng([self.cfg.seed, step, 1]))}

    def backward(self, msg: Message) -> Message:
        step = int(msg["step"])
        if step != self._pending:
            raise ValueError(f"Backward for step {step}, but the pending forward is step {self._pending}")
        self._apply(tf.constant(self._features(msg["index"])), tf.constant(msg["gradient"], tf.float32))
        self.step, self._pending = step, None
        return {"step": np.int64(step)}

    @tf.function(reduce_retracing=True)
    def _apply(self, x: tf.Tensor, gradient: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            embedding = self.bottom(x, training=True)
        variables = self.bottom.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(embedding, variables, output_gradients=gradient),
                                           variables, strict=True))

    def embed(self, msg: Message) -> Message:
        return {"embedding": self.bottom(self._features(msg["index"]), training=False).numpy()}

    def _features(self, index: np.ndarray) -> np.ndarray:
        if self.rows is None:
            raise ValueError("no intersection yet (run PSI first)")
        index = np.asarray(index, np.int64).ravel()
        if len(index) and (index.min() < 0 or index.max() >= len(self.rows)):
            raise ValueError(f"row index out of the intersection's range [0, {len(self.rows)})")
        return self.rows[index]

    # ------------------------------------------------------------------ state
    def checkpoint(self, msg: Message) -> Message:
        step = int(msg["step"])
        if step != self.step:
            raise ValueError(f"Checkpoint for step {step}, but the media party is at step {self.step}")
        self.checkpoints.save(checkpoint_number=step)
        return {"step": np.int64(step)}

    def saved_steps(self) -> list[int]:
        return sorted(int(p.rsplit("-", 1)[1]) for p in self.checkpoints.checkpoints)

    def restore(self, step: int) -> None:
        self.checkpoints.checkpoint.restore(os.path.join(self.checkpoints.directory, f"ckpt-{step}")).assert_consumed()
        self.step, self._pending = step, None
        log.info("media party at step %d", step)

    def stop(self, msg: Message) -> Message:
        self.stopped.set()
        return {}

    def handlers(self) -> dict[str, Handler]:
        """The channel's methods; each call also marks the service as active (see :meth:`idle_for`)."""
        methods = {"PsiReply": self.psi_reply, "PsiFinish": self.psi_finish, "Hello": self.hello,
                   "Forward": self.forward, "Backward": self.backward, "Embed": self.embed,
                   "Checkpoint": self.checkpoint, "Stop": self.stop}
        return {name: self._touching(fn) for name, fn in methods.items()}

    def _touching(self, fn: Handler) -> Handler:
        def call(msg: Message) -> Message:
            self.last_call = time.monotonic()
            return fn(msg)

        return call

    def idle_for(self) -> float:
        """Seconds since the last call."""
        return time.monotonic() - self.last_call
