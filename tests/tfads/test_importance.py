"""Feature importance: each method finds a planted feature; `tfads importance` end to end and on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS=1 before TensorFlow)
from tfads import cli
from tfads import importance as imp
from tfads.core.manifest import Manifest

VALUES = {"signal": [f"s{i}" for i in range(10)], "noise": [str(i) for i in range(10)], "scene": ["a", "b"],
          "tags": ["t0", "t1", "t2", "t3"]}


def planted_manifest(tmp_path) -> Manifest:
    """Categorical ``signal`` (string), ``noise`` (int), domain-aware ``scene``, multi-valued ``tags`` (up to 3);
    hashed ``user``; numeric ``amount``."""
    (tmp_path / "vocab").mkdir()
    for name, values in VALUES.items():
        (tmp_path / "vocab" / f"{name}.txt").write_text("\n".join(values) + "\n")
    features = {name: {"kind": "categorical", "dtype": "int64" if name == "noise" else "string",
                       "vocab": f"vocab/{name}.txt", "vocab_size": len(values)} for name, values in VALUES.items()}
    features["scene"]["domain_aware"] = True
    features["tags"].update(multi=True, max_len=3)
    features["user"] = {"kind": "hashed", "dtype": "int64", "hash_bins": 64}
    features["amount"] = {"kind": "numeric", "dtype": "float32", "mean": 0.0, "std": 1.0}
    data = {"version": 1, "schema": {}, "features": features, "days": {}, "labels": ["click"],
            "label_roles": {"click": "click", "conversion": None}, "splits": {"train": {"files": [], "ctr": 0.3}}}
    return Manifest(str(tmp_path / "manifest.json"), data)


def planted_rows(n: int, seed: int) -> imp.Rows:
    """The click rate is 0.6 for signal s0..s4 and 0.05 for s5..s9; every other input is noise."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(0, 10, n)
    inputs = {
        "signal": np.array([f"s{i}".encode() for i in signal], dtype=object),
        "noise": rng.integers(0, 10, n),
        "scene": np.array([b"a", b"b"], dtype=object)[rng.integers(0, 2, n)],
        "user": rng.integers(0, 1000, n),
        "amount": rng.normal(size=n).astype(np.float32),
        "tags": np.array([b"t0", b"t1", b"t2", b"t3", b""], dtype=object)[rng.integers(0, 4, (n, 3))],
        "tags_length": rng.integers(0, 4, n),
    }
    inputs["tags"][np.arange(3) >= inputs["tags_length"][:, None]] = b""  # padding
    click = (rng.random(n) < np.where(signal < 5, 0.6, 0.05)).astype(np.int64)
    return imp.Rows(inputs, click)


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "per_feature_tables"])
def planted(request, tmp_path_factory):
    """The planted manifest, train and valid rows, and a small DNN (fused embedding table or one table per feature)
    fitted on the train rows."""
    import tf_keras as keras

    from tfads.core.experiment import AdaSparseConfig, ModelConfig
    from tfads.models import build_model

    manifest = planted_manifest(tmp_path_factory.mktemp("planted"))
    train, valid = planted_rows(4000, seed=1), planted_rows(2000, seed=2)
    config = ModelConfig(backbone="dnn", embedding_dim=4, deep_units=[16], tower_units=[8], numeric_encoding="dense",
                         fused_embeddings=request.param, embedding_init_std=0.01, matmul_dtype="float32",
                         adasparse=AdaSparseConfig(enabled=False))
    keras.utils.set_random_seed(0)
    model = build_model(manifest, config)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={"ctr": "binary_crossentropy"})
    model.fit(train.inputs, {"ctr": train.click[:, None].astype(np.float32)}, batch_size=128, epochs=3, verbose=0)
    return manifest, model, train, valid


def test_each_method_ranks_the_planted_feature_first(planted):
    manifest, model, train, valid = planted
    predict = imp.runner(model)
    permutation = imp.permutation_importance(lambda x: predict(x)["ctr"].reshape(-1), valid,
                                             imp.input_units(manifest), repeats=2, seed=0)
    assert permutation.attrs["baseline_auc"] > 0.75
    embedding = imp.embedding_magnitude(model, manifest, valid)
    tree = imp.tree_importance(manifest, train, valid, repeats=2, seed=0)
    for table, column in ((permutation, "permutation"), (embedding, "embedding"), (tree, "tree")):
        assert table[column].idxmax() == "signal", table
    assert np.isnan(embedding.loc["amount", "embedding"])  # a dense-encoded numeric has no embedding
    names = {layer.name for layer in model.layers}
    fused = "fused_embedding[25:89]"  # 11 + 11 + 3 rows (vocabulary and OOV) of signal, noise and scene before it
    assert embedding.loc["user", "source"] == (fused if "fused_embedding" in names else "user_embedding")
    assert embedding.loc["tags", "source"] == "tags_embedding"  # a multi-valued feature: its own table
    assert list(tree.index) == ["signal", "noise", "scene", "user", "amount"]  # not the list input
    result = imp.rank([permutation, embedding, tree], manifest, share=0.9)
    assert result.ranked_by == "permutation" and result.table.index[0] == "signal"
    assert result.suggested[0] == "signal"


def test_suggest_covers_the_share_of_the_positive_total():
    importance = pd.Series({"a": 0.5, "b": 0.3, "c": 0.2, "d": -0.1})
    assert imp.suggest(importance, 0.8) == ["a", "b"]
    assert imp.suggest(importance, 0.81) == ["a", "b", "c"]
    assert imp.suggest(importance, 1.0) == ["a", "b", "c"]
    assert imp.suggest(-importance, 0.9) == ["d"]
    assert imp.suggest(pd.Series({"a": 0.0}), 0.9) == []


def test_importance_command_writes_table_json_chart_and_suggestion(trained_model_dir, manifest_path, tmp_path,
                                                                   capsys):
    out = tmp_path / "importance"
    code = cli.main(["importance", "--model-dir", trained_model_dir, "--data", manifest_path, "--out", str(out),
                     "--max-rows", "2000", "--repeats", "2"])
    assert code == 0
    report = json.loads((out / "importance.json").read_text())
    inputs = set(imp.input_units(Manifest(manifest_path, json.loads(open(manifest_path).read()))))
    features = {row["feature"]: row for row in report["features"]}
    assert inputs <= set(features) and report["rows"] == 2000 and report["ranked_by"] == "permutation"
    assert all(features[name]["permutation"] is not None and features[name]["tree"] is not None for name in inputs)
    assert 0.5 < report["baseline_auc"] <= 1 and report["suggested"]
    assert set(report["suggested"]) <= inputs
    assert "| rank | feature |" in (out / "importance.md").read_text()
    assert (out / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "suggested real-time features" in printed and report["suggested"][0] in printed


@pytest.mark.parametrize("flags, problem", [
    (["--model-dir", "{tmp}/nothing"], "nothing"),
    (["--methods", "permutation,shap"], "shap"),
    (["--share", "1.5"], "--share"),
])
def test_bad_input_is_one_error_line(flags, problem, manifest_path, tmp_path, capsys):
    args = {"--model-dir": str(tmp_path), "--data": manifest_path}
    args.update(dict(zip(flags[::2], (f.format(tmp=tmp_path) for f in flags[1::2]), strict=True)))
    code = cli.main(["importance", *(x for kv in args.items() for x in kv)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tfads importance: error:") and problem in err
