"""Serving the federated model: the media party's embedding model, the ad party's model that takes the media
embedding as an input, and a bidding client that fetches the embedding first (or falls back to the
learned default embedding when the media server does not answer within its deadline).

* media model (``export_media_model``): ``serving_default(user_id int64 [B]) -> media_embedding float32
  [B, d], media_matched float32 [B]``; the media party's user table (a hash table user id -> row and
  the feature rows) travels inside the SavedModel, so a request carries only the join key. Unknown users
  get zeros and ``media_matched`` 0.
* ad model (``export_ad_model``): ``serving_default`` of the raw fields (``Manifest.model_inputs``) plus
  ``media_embedding`` and ``media_matched`` -> ``ctr`` (and ``cvr``, ``ctcvr``), with ``*_raw`` aliases.
Both are written as ``<base>/<version>/`` through a hidden temporary directory and a rename.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import grpc
import tensorflow as tf
import tf_keras as keras
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.client import BidClient, BidRequestError, _user_id
from serving.experiment import Arm
from serving.export import version_paths
from tfads.core.manifest import Manifest
from tfads.core.names import RAW_SUFFIX
from tfads.data import DTYPES
from tfads.federated.models import MEDIA_EMBEDDING, MEDIA_MATCHED

log = logging.getLogger(__name__)
MEDIA_USER = "user_id"


def _save_version(module: tf.Module, signatures: dict, base_path: str, version: int | None) -> str:
    _, final, tmp = version_paths(base_path, version)
    tf.saved_model.save(module, tmp, signatures=signatures)
    tf.io.gfile.rename(tmp, final)
    return final


class MediaEmbeddingModule(tf.Module):
    """The media party's serving module: user id -> (embedding, matched) from its table and bottom model."""

    def __init__(self, bottom: keras.Model, keys: Sequence[str], rows: np.ndarray) -> None:
        super().__init__()
        self.bottom = bottom
        self.rows = tf.Variable(np.asarray(rows, np.float32), trainable=False, name="media_rows")
        init = tf.lookup.KeyValueTensorInitializer(tf.constant([int(k) for k in keys], tf.int64),
                                                   tf.range(len(keys), dtype=tf.int64))
        self.table = tf.lookup.StaticHashTable(init, default_value=-1)
        self.dim = int(bottom.output_shape[-1])
        spec = tf.TensorSpec([None], tf.int64, name=MEDIA_USER)
        self.serving_default = tf.function(self._serve).get_concrete_function(spec)

    def _serve(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        index = self.table.lookup(user_id)
        matched = index >= 0
        embedding = self.bottom(tf.gather(self.rows, tf.maximum(index, 0)), training=False)
        embedding = tf.where(matched[:, None], embedding, tf.zeros_like(embedding))
        return {MEDIA_EMBEDDING: embedding, MEDIA_MATCHED: tf.cast(matched, tf.float32)}


def export_media_model(bottom: keras.Model, keys: Sequence[str], rows: np.ndarray, base_path: str, *,
                       version: int | None = None) -> str:
    """Write the media party's embedding model as ``<base_path>/<version>/``; return that path."""
    module = MediaEmbeddingModule(bottom, keys, rows)
    return _save_version(module, {"serving_default": module.serving_default}, base_path, version)


class FederatedAdModule(tf.Module):
    """The ad party's serving module: raw fields + the media embedding -> the heads."""

    def __init__(self, top: keras.Model, manifest: Manifest, media_dim: int) -> None:
        super().__init__()
        self.top, self.heads = top, manifest.heads
        specs = {name: tf.TensorSpec([None, *shape], DTYPES[dtype], name=name)
                 for name, (dtype, shape) in manifest.model_inputs.items()}
        specs[MEDIA_EMBEDDING] = tf.TensorSpec([None, media_dim], tf.float32, name=MEDIA_EMBEDDING)
        specs[MEDIA_MATCHED] = tf.TensorSpec([None], tf.float32, name=MEDIA_MATCHED)
        self.serving_default = tf.function(self._serve).get_concrete_function(**specs)

    def _serve(self, **features: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.top(features, training=False)
        result = {k: tf.reshape(out[k], [-1]) for k in self.heads}
        return {**result, **{k + RAW_SUFFIX: v for k, v in result.items()}}


def export_ad_model(top: keras.Model, manifest: Manifest, base_path: str, *, media_dim: int,
                    version: int | None = None) -> str:
    """Write the ad party's model (taking the media embedding) as ``<base_path>/<version>/``; return that path."""
    module = FederatedAdModule(top, manifest, media_dim)
    return _save_version(module, {"serving_default": module.serving_default}, base_path, version)


class MediaBidClient(BidClient):
    """A :class:`~serving.client.BidClient` whose Predicts carry the media embedding of the request's user,
    fetched from the media party's server (model ``media_model``) within ``media_deadline_ms``; when that
    server does not answer in time, the row's ``media_matched`` is 0 and the ad model uses its learned
    default embedding (counted in ``media_fallbacks``)."""

    def __init__(self, target: str, features: Mapping[str, str], experiment, *, media_target: str, media_dim: int,
                 media_model: str = "media", media_deadline_ms: float = 5.0, **kwargs: Any) -> None:
        super().__init__(target, features, experiment, **kwargs)
        self.media_dim, self.media_model = media_dim, media_model
        self.media_deadline_s = media_deadline_ms / 1000.0
        self.media_channel = grpc.insecure_channel(media_target)
        self._media_predict = prediction_service_pb2_grpc.PredictionServiceStub(self.media_channel).Predict
        self.media_fallbacks = 0

    @property
    def inputs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {**super().inputs, MEDIA_EMBEDDING: ("float32", (self.media_dim,)), MEDIA_MATCHED: ("float32", ())}

    def media_embedding(self, user: Any) -> tuple[np.ndarray, float]:
        """(embedding, matched) of ``user`` from the media server, or (zeros, 0) when it does not answer."""
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=self.media_model))
        request.inputs[MEDIA_USER].CopyFrom(tf.make_tensor_proto(np.array([int(user)], np.int64)))
        try:
            response = self._media_predict(request, timeout=self.media_deadline_s)
        except grpc.RpcError as e:
            self.media_fallbacks += 1
            log.debug("media embedding for user %s: %s", user, e.code())
            return np.zeros(self.media_dim, np.float32), 0.0
        embedding = tf.make_ndarray(response.outputs[MEDIA_EMBEDDING]).reshape(-1)
        return embedding.astype(np.float32), float(tf.make_ndarray(response.outputs[MEDIA_MATCHED]).reshape(-1)[0])

    def build_request(self, arm: Arm, request: Mapping[str, Any]) -> tuple[predict_pb2.PredictRequest, list[dict]]:
        predict, merged = super().build_request(arm, request)
        try:
            user = _user_id(request)
        except BidRequestError:
            user = None
        embedding, matched = self.media_embedding(user) if user is not None else (np.zeros(self.media_dim), 0.0)
        n = len(merged)
        predict.inputs[MEDIA_EMBEDDING].CopyFrom(tf.make_tensor_proto(np.tile(embedding, (n, 1)).astype(np.float32)))
        predict.inputs[MEDIA_MATCHED].CopyFrom(tf.make_tensor_proto(np.full(n, matched, np.float32)))
        return predict, merged

    def close(self) -> None:
        self.media_channel.close()
        super().close()
