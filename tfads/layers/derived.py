"""Derived features computed in the model from raw fields (e.g. scenario = media|slot), as the Beam job writes them.

The Beam job (``beam_jobs/join.py`` ``add_derived``) joins each part's pandas ``astype(str)`` text with the
separator: strings as they are, ints as decimal text with a leading ``-`` when negative. ``join_fields``
builds the same bytes from the tensors, so a served model needs only the raw fields and training, the
input pipeline's derived columns and serving all run this one function (decision 0027). Float parts are
refused: the examples keep float32 while the Beam job printed the float64 it parsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras


def join_fields(parts: Sequence[tf.Tensor], separator: str) -> tf.Tensor:
    """The derived value of each row: the parts' text joined by ``separator``.

    Args:
      parts: tensors of one shape, each ``tf.string`` (taken as is) or an integer dtype (decimal text).
      separator: placed between the parts.

    Returns:
      A ``tf.string`` tensor of the parts' shape.

    Raises:
      ValueError: no parts, or a part of another dtype (e.g. float).
    """
    if not parts:
        raise ValueError("join_fields: parts must not be empty")
    text = []
    for i, part in enumerate(parts):
        part = tf.convert_to_tensor(part)
        if part.dtype == tf.string:
            text.append(part)
        elif part.dtype.is_integer:
            text.append(tf.strings.as_string(part))
        else:
            raise ValueError(f"join_fields: part {i} has dtype {part.dtype.name}; only string and integer parts "
                             "can match the Beam job's text")
    return text[0] if len(text) == 1 else tf.strings.join(text, separator=separator)


def add_derived(
    values: Mapping[str, tf.Tensor], derived: Mapping[str, tuple[Sequence[str], str]]
) -> dict[str, tf.Tensor]:
    """``values`` with every derived feature added: ``derived`` maps name -> (parts, separator)."""
    out = dict(values)
    for name, (parts, separator) in derived.items():
        out[name] = join_fields([values[p] for p in parts], separator)
    return out


@keras.utils.register_keras_serializable(package="tfads")
class JoinFields(keras.layers.Layer):
    """A derived feature: the text of raw fields joined by a separator (``join_fields``).

    Input: a mapping holding at least ``fields`` (each ``(batch,)``, string or integer). Output:
    ``(batch,)`` strings. The layer's name is the derived feature's name.

    >>> JoinFields(["media", "slot"], "|", name="scenario")({"media": tf.constant(["app"]),
    ...                                                     "slot": tf.constant(["feed"])})
    <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'app|feed'], dtype=object)>

    Args:
      fields: the raw fields joined, in order.
      separator: placed between them.
    """

    def __init__(self, fields: Sequence[str], separator: str = "|", **kwargs) -> None:
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items() if k != "trainable"})
        if not fields:
            raise ValueError(f"JoinFields: fields must name at least one raw field. Received: fields={fields!r}")
        self.fields = list(fields)
        self.separator = str(separator)

    def call(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        missing = [f for f in self.fields if f not in inputs]
        if missing:
            raise ValueError(f"JoinFields {self.name!r}: inputs lack fields {missing} (have {sorted(inputs)})")
        return join_fields([inputs[f] for f in self.fields], self.separator)

    def get_config(self) -> dict:
        return {**super().get_config(), "fields": list(self.fields), "separator": self.separator}


def derived_layers(model: keras.Model) -> dict[str, JoinFields]:
    """The model's derived-feature layers by feature name (its ``JoinFields`` layers, top level)."""
    return {layer.name: layer for layer in model.layers if isinstance(layer, JoinFields)}
