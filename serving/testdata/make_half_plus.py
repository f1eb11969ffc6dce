"""Write equivalents of TF Serving's ``half_plus_two`` / ``half_plus_three`` test SavedModels.

Same graph, tensor names and SignatureDefs as ``saved_model_half_plus_two.py`` in
tensorflow/serving (``servables/tensorflow/testdata``), as checked in there
(``saved_model_half_plus_two_cpu``, described by ``half_plus_two_model_metadata.json``):

- ``tf_example:0``: serialized tf.Examples (a placeholder of unknown shape), parsed for the features
  ``x`` (float, required) and ``x2`` (float, default 0.0), each ``[-1, 1]``;
- ``y = a*x + b``, ``y2 = a*x + c``, ``y3 = a2*x2 + c2`` with variables ``a = a2 = 0.5``, ``b`` the
  offset (2 for half_plus_two, 3 for half_plus_three) and ``c = c2 = b + 1``;
- signatures ``serving_default`` (predict ``x -> y``), ``classify_x_to_y`` (``inputs -> scores``),
  ``regress_x_to_y``, ``regress_x_to_y2`` and ``regress_x2_to_y3`` (``inputs -> outputs``);
- an asset ``foo.txt`` (``asset-file-contents``) whose file name a main op assigns to the variable
  ``filename_tensor``.

``python -m serving.testdata.make_half_plus OUT`` writes ``OUT/half_plus_two/00000123`` and
``OUT/half_plus_three/00000123``; tests call :func:`write_half_plus` directly.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

v1 = tf.compat.v1
ASSET_NAME = "foo.txt"
ASSET_CONTENTS = "asset-file-contents"
DEFAULT_VERSIONS = ("00000123",)
OFFSETS = {"half_plus_two": 2.0, "half_plus_three": 3.0}


def _signature(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], method: str):
    info = v1.saved_model.utils.build_tensor_info
    return v1.saved_model.signature_def_utils.build_signature_def(
        {k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()}, method
    )


def _signature_defs(examples: tf.Tensor, x: tf.Tensor, x2: tf.Tensor, y: tf.Tensor, y2: tf.Tensor, y3: tf.Tensor):
    c = v1.saved_model.signature_constants
    return {
        "regress_x_to_y": _signature({c.REGRESS_INPUTS: examples}, {c.REGRESS_OUTPUTS: y}, c.REGRESS_METHOD_NAME),
        "regress_x_to_y2": _signature({c.REGRESS_INPUTS: examples}, {c.REGRESS_OUTPUTS: y2}, c.REGRESS_METHOD_NAME),
        "regress_x2_to_y3": _signature({c.REGRESS_INPUTS: x2}, {c.REGRESS_OUTPUTS: y3}, c.REGRESS_METHOD_NAME),
        "classify_x_to_y": _signature(
            {c.CLASSIFY_INPUTS: examples}, {c.CLASSIFY_OUTPUT_SCORES: y}, c.CLASSIFY_METHOD_NAME
        ),
        c.DEFAULT_SERVING_SIGNATURE_DEF_KEY: _signature({"x": x}, {"y": y}, c.PREDICT_METHOD_NAME),
    }


def save_half_plus(export_dir: str, offset: float) -> str:
    """Write one version of ``y = 0.5 * x + offset`` (with its asset) to ``export_dir``."""
    with tempfile.TemporaryDirectory() as scratch, tf.Graph().as_default(), v1.Session() as sess:
        a, b = v1.Variable(0.5, name="a"), v1.Variable(offset, name="b")
        c = v1.Variable(offset + 1.0, name="c")
        examples = v1.placeholder(tf.string, name="tf_example")
        features = v1.io.parse_example(
            examples,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        for parsed in features.values():  # TF 1.x inferred [-1, 1] from the unshaped placeholder
            parsed.set_shape([None, 1])
        x = tf.identity(features["x"], name="x")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        x2 = tf.identity(features["x2"], name="x2")
        a2, c2 = v1.Variable(0.5, name="a2"), v1.Variable(offset + 1.0, name="c2")
        y3 = tf.identity(a2 * x2 + c2, name="y3")

        asset_path = os.path.join(scratch, ASSET_NAME)
        with open(asset_path, "w", encoding="utf-8") as f:
            f.write(ASSET_CONTENTS)
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, tf.constant(asset_path))
        filename = v1.Variable(ASSET_NAME, name="filename_tensor", trainable=False, collections=[])

        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            sess,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map=_signature_defs(examples, x, x2, y, y2, y3),
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(filename.assign(ASSET_NAME)),
        )
        builder.save()
    return export_dir


def write_half_plus(base_dir: str, name: str = "half_plus_two", versions: Iterable[str] = DEFAULT_VERSIONS) -> str:
    """Write ``base_dir/<name>/<version>/`` for each version (``00000123`` style); return the model base path."""
    if name not in OFFSETS:
        raise ValueError(f"unknown test model {name!r}; expected one of {sorted(OFFSETS)}")
    base = os.path.join(base_dir, name)
    for version in versions:
        save_half_plus(os.path.join(base, version), OFFSETS[name])
    return base


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write half_plus_two/ and half_plus_three/ into")
    parser.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS), help="version directory names")
    args = parser.parse_args(argv)
    for name in OFFSETS:
        print(write_half_plus(args.out, name, args.versions))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
