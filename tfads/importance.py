"""Per-feature importance of a trained model on a split: permutation (pCTR AUC drop), embedding-weight magnitude and
a gradient-boosted tree's permutation importance, ranked, with a suggested real-time feature set."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras
from tqdm import tqdm

from tfads import metrics, plots
from tfads.calibration.combined import split_calibrated
from tfads.core.configtools import ConfigError
from tfads.core.manifest import Manifest, history_length_input
from tfads.core.names import CLICK, CTR
from tfads.data import make_dataset
from tfads.features import FUSED_EMBEDDING

log = logging.getLogger(__name__)
METHODS = ("permutation", "embedding", "tree")
RANKING = ("permutation", "tree", "embedding")  # the table is ranked by the first method run
TREE_CATEGORIES = 254  # most frequent values per categorical; the rest share code 254 (HistGradientBoosting: < 256)

Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Rows:
    """Examples as arrays: every model input (a list input as (n, max_len), its ``<name>_length`` beside it) and the
    click label."""

    inputs: dict[str, np.ndarray]
    click: np.ndarray

    def __len__(self) -> int:
        return len(self.click)


@dataclass
class Importance:
    """The ranked table (one row per feature; NaN where a method does not apply), the method it is ranked by, the
    suggested real-time feature set, and what was run (``info``: split, rows, baseline AUC, notes, ...)."""

    table: pd.DataFrame
    ranked_by: str
    suggested: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """The ranked table as a GitHub markdown table."""
        cols = [c for c in ("kind", "permutation", "permutation_std", "tree", "tree_std", "embedding")
                if c in self.table]
        lines = ["| rank | feature | " + " | ".join(cols) + " |", "|---:|---|" + "".join(
            "---|" if c == "kind" else "---:|" for c in cols)]
        for rank, (name, row) in enumerate(self.table.iterrows(), start=1):
            cells = [str(row[c]) if c == "kind" else ("n/a" if pd.isna(row[c]) else f"{row[c]:.4f}") for c in cols]
            lines.append(f"| {rank} | {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        rows = [{"feature": name, **{k: (None if pd.isna(v) else v) for k, v in row.items()}}
                for name, row in self.table.iterrows()]
        return {**self.info, "ranked_by": self.ranked_by, "features": rows, "suggested": self.suggested}


def parse_methods(text: str) -> tuple[str, ...]:
    """``"permutation,tree"`` -> the methods, in ``METHODS`` order; an unknown or empty list raises ConfigError."""
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown or not asked:
        raise ConfigError(f"--methods {text!r}: unknown method(s) {unknown} (choose from {', '.join(METHODS)})")
    return tuple(m for m in METHODS if m in asked)


def check_share(share: float) -> float:
    """``share`` if it lies in (0, 1], else ConfigError."""
    if not 0 < share <= 1:
        raise ConfigError(f"--share {share}: expected a share of the total importance in (0, 1]")
    return share


def load_rows(manifest: Manifest, split: str, *, max_rows: int, seed: int | None = None,
              batch_size: int = 4096) -> Rows:
    """At most ``max_rows`` ad examples (feed samples dropped) of ``split``: the first ones in file order, or with a
    ``seed`` a shuffled sample (files shuffled, 50,000-record buffer)."""
    ds = make_dataset(manifest.split_files(split), manifest, batch_size, shuffle=seed is not None, seed=seed,
                      deterministic=True, with_meta=True, for_training=False)
    names, label = list(manifest.model_inputs), manifest.label_roles[CLICK]
    parts: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in ds:
        ad = batch[manifest.source_feature].numpy() != b"feed"
        parts.append({k: batch[k].numpy()[ad] for k in (*names, label)})
        count += int(ad.sum())
        if count >= max_rows:
            break
    if not count:
        raise ValueError(f"{split}: no ad examples in {manifest.path}")
    joined = {k: np.concatenate([p[k] for p in parts])[:max_rows] for k in parts[0]}
    return Rows({k: joined[k] for k in names}, joined[label].astype(np.int64))


def runner(model: keras.Model, batch_size: int = 4096) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``model`` (dict of inputs in, dict of outputs out) as one traced function over arrays, in batches."""
    signature = {k: tf.TensorSpec(t.shape, t.dtype) for k, t in model.input.items()}
    call = tf.function(lambda x: model(x, training=False), input_signature=[signature])

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        outs = [call({k: inputs[k][i:i + batch_size] for k in signature}) for i in range(0, n, batch_size)]
        return {k: np.concatenate([o[k].numpy() for o in outs]) for k in outs[0]}

    return run


def input_units(manifest: Manifest) -> dict[str, list[str]]:
    """What permutation shuffles as one feature, name -> input columns: each scalar model input alone, each list
    input (history, multi-valued feature) with its ``<name>_length``."""
    units = {name: [name] for name in manifest.input_dtypes}
    units.update({name: [name, history_length_input(name)] for name in manifest.list_inputs})
    return units


def permutation_importance(scorer: Scorer, rows: Rows, units: dict[str, list[str]], *, repeats: int = 3,
                           seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Baseline AUC minus AUC with one unit's columns shuffled across the rows (the same permutation for all its
    columns, seeded by ``seed``, the repeat and the unit's name); columns ``permutation`` (mean over ``repeats``)
    and ``permutation_std``; ``attrs["baseline_auc"]``."""
    base = metrics.auc(rows.click, scorer(rows.inputs))
    out = {}
    for name, columns in tqdm(units.items(), desc="permutation", unit="feature", disable=not progress):
        drops = []
        for r in range(repeats):
            order = np.random.default_rng([seed, r, zlib.crc32(name.encode())]).permutation(len(rows))
            shuffled = {**rows.inputs, **{c: rows.inputs[c][order] for c in columns}}
            drops.append(base - metrics.auc(rows.click, scorer(shuffled)))
        out[name] = (np.mean(drops), np.std(drops))
    log.info("permutation: baseline AUC %.4f, %d features x %d shuffles of %d rows", base, len(units), repeats,
             len(rows))
    table = pd.DataFrame.from_dict(out, orient="index", columns=["permutation", "permutation_std"])
    table.attrs["baseline_auc"] = base
    return table


def embedding_magnitude(model: keras.Model, manifest: Manifest, rows: Rows) -> pd.DataFrame:
    """Mean L2 norm of each feature's embedding rows: ``embedding`` over the rows ``rows`` look up (so the rows no
    example uses, still at their random start, do not count), ``embedding_all_rows`` over all of the feature's rows.

    Categorical / hashed features: their rows of the fused table (offset by the id spaces of the features before
    them, as ``tfads.features`` stacks them) or their own table; multi-valued: their own table, real positions only;
    numeric: their bucket table (``boundaries``), else the norm of their value vector (``numeric_encoding:
    embedding``); a ``dense``-encoded numeric without buckets has no embedding (NaN). ``source`` names the table.
    """
    base, _ = split_calibrated(model)
    names = {layer.name for layer in base.layers}
    ids = [n for n, s in manifest.features.items() if s["kind"] in ("categorical", "hashed") and not s.get("multi")]
    fused = FUSED_EMBEDDING in names
    probes = {FUSED_EMBEDDING: FUSED_EMBEDDING} if fused else {}
    for name, spec in manifest.features.items():
        table = f"{name}_bucket_embedding" if spec["kind"] == "numeric" else f"{name}_embedding"
        if table in names and not (fused and name in ids):
            probes[name] = table
    probe = keras.Model(base.input, {k: base.get_layer(t).get_input_at(0) for k, t in probes.items()})
    looked_up = runner(probe)(rows.inputs)
    norms = {t: np.linalg.norm(base.get_layer(t).embeddings.numpy(), axis=1) for t in probes.values()}
    out: dict[str, tuple[float, float, str]] = {}
    if fused:
        norm, start = norms[FUSED_EMBEDDING], 0
        for i, name in enumerate(ids):
            lookup = base.get_layer(f"{name}_hash" if manifest.features[name]["kind"] == "hashed" else f"{name}_lookup")
            size = lookup.num_bins if hasattr(lookup, "num_bins") else lookup.vocabulary_size()
            used = looked_up[FUSED_EMBEDDING][:, i].astype(np.int64)  # already offset into the feature's rows
            stop = start + size
            out[name] = (norm[used].mean(), norm[start:stop].mean(), f"{FUSED_EMBEDDING}[{start}:{stop}]")
            start = stop
        if start != len(norm):
            raise ValueError(f"{FUSED_EMBEDDING}: the features' id spaces sum to {start} rows, the table has "
                             f"{len(norm)}: the model was not built from this manifest")
    for name, table in probes.items():
        if name == FUSED_EMBEDDING:
            continue
        used = looked_up[name].astype(np.int64)
        if used.ndim == 2:  # a list input: its real positions only
            used = used[np.arange(used.shape[1]) < rows.inputs[history_length_input(name)][:, None]]
        out[name] = (norms[table][used].mean(), norms[table].mean(), table)
    for name, spec in manifest.features.items():
        vector = f"{name}_value_embedding"
        if name not in out and spec["kind"] == "numeric" and vector in names:
            magnitude = float(np.linalg.norm(base.get_layer(vector).kernel.numpy()))
            out[name] = (magnitude, magnitude, f"{vector} kernel")
    table = pd.DataFrame.from_dict(out, orient="index", columns=["embedding", "embedding_all_rows", "source"])
    return table.reindex(list(manifest.features))


def tree_columns(manifest: Manifest) -> dict[str, bool]:
    """The tree's features, scalar model input -> categorical?: numeric features (and float raw fields) are
    numbers, everything else (categorical, hashed, the string / int fields derived features join) categories."""
    out = {}
    for name, dtype in manifest.input_dtypes.items():
        spec = manifest.features.get(name)
        out[name] = spec["kind"] != "numeric" if spec else dtype != "float32"
    return out


def _encode(columns: dict[str, bool], train: Rows, valid: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrices: a categorical column as codes of its ``TREE_CATEGORIES`` most frequent train values (the
    rest, and values unseen in train, one shared code), a numeric column as is."""
    def matrix(rows: Rows) -> np.ndarray:
        return np.column_stack([pd.Series(rows.inputs[n]).map(codes[n]).fillna(TREE_CATEGORIES) if n in codes
                                else rows.inputs[n] for n in columns]).astype(np.float64)

    codes = {}
    for name in (n for n, categorical in columns.items() if categorical):
        top = pd.Series(train.inputs[name]).value_counts().index[:TREE_CATEGORIES]
        codes[name] = dict(zip(top, range(len(top)), strict=True))
    return matrix(train), matrix(valid)


def tree_importance(manifest: Manifest, train: Rows, valid: Rows, *, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """scikit-learn's HistGradientBoostingClassifier fitted on ``train`` (the scalar model inputs, see
    :func:`tree_columns`; label click), then its permutation importance on ``valid`` (AUC drop, ``repeats``
    shuffles): columns ``tree``, ``tree_std``; ``attrs["tree_auc"]`` is the tree's own validation AUC."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance as sklearn_permutation
    from threadpoolctl import threadpool_limits

    columns = tree_columns(manifest)
    x_train, x_valid = _encode(columns, train, valid)
    tree = HistGradientBoostingClassifier(categorical_features=list(columns.values()), early_stopping=True,
                                          random_state=seed)
    # One OpenMP thread: beside TensorFlow's thread pools on 2 cores, OpenMP's spinning threads made a 100-iteration
    # fit on 5,000 rows take 17 s instead of 0.5 s.
    with threadpool_limits(limits=1, user_api="openmp"):
        tree.fit(x_train, train.click)
        result = sklearn_permutation(tree, x_valid, valid.click, scoring="roc_auc", n_repeats=repeats,
                                     random_state=seed)
        table = pd.DataFrame({"tree": result.importances_mean, "tree_std": result.importances_std},
                             index=list(columns))
        table.attrs["tree_auc"] = metrics.auc(valid.click, tree.predict_proba(x_valid)[:, 1])
    log.info("tree: %d boosting iterations on %d train rows, validation AUC %.4f", tree.n_iter_, len(train),
             table.attrs["tree_auc"])
    return table


def suggest(importance: pd.Series, share: float) -> list[str]:
    """The fewest top features whose positive importances sum to ``share`` of the total positive importance."""
    positive = importance[importance > 0].sort_values(ascending=False)
    if positive.empty:
        return []
    covered = positive.cumsum() / positive.sum()
    return list(positive.index[: int(np.searchsorted(covered.to_numpy(), share - 1e-12)) + 1])


def feature_kinds(manifest: Manifest) -> dict[str, str]:
    """Each feature and model input -> its kind: the manifest's, ``derived``, ``history``, ``multi ...`` or ``raw``."""
    kinds = {name: "raw" for name in manifest.input_dtypes}
    derived = manifest.derived
    for name, spec in manifest.features.items():
        kinds[name] = "derived" if name in derived else ("multi " if spec.get("multi") else "") + spec["kind"]
    kinds.update({name: "history" for name in manifest.history})
    return kinds


def rank(tables: Sequence[pd.DataFrame], manifest: Manifest, share: float) -> Importance:
    """One table from the methods' tables, ranked by the first of ``RANKING`` present (NaN last);
    the suggested set from that method's column."""
    table = pd.concat(tables, axis=1)
    ranked_by = next(m for m in RANKING if m in table)
    table.insert(0, "kind", [feature_kinds(manifest).get(n, "?") for n in table.index])
    table = table.sort_values(ranked_by, ascending=False, na_position="last", kind="stable")
    return Importance(table, ranked_by, suggest(table[ranked_by].dropna(), share))


def feature_importance(
    model: keras.Model | None,
    manifest: Manifest,
    *,
    split: str = "valid",
    methods: Sequence[str] = METHODS,
    repeats: int = 3,
    max_rows: int = 200_000,
    share: float = 0.9,
    seed: int = 0,
    progress: bool = False,
) -> Importance:
    """Run ``methods`` on at most ``max_rows`` ad examples of ``split`` (the tree trains on a shuffled sample of
    at most ``max_rows`` train examples) and rank the features; ``model`` may be None for ``tree`` alone."""
    rows = load_rows(manifest, split, max_rows=max_rows)
    if rows.click.min() == rows.click.max():
        raise ConfigError(f"{split}: its {len(rows)} rows hold one label class only, so AUC is undefined (raise "
                          "--max-rows or choose another --split)")
    log.info("importance on %d %s rows (%d clicks): %s", len(rows), split, int(rows.click.sum()), ", ".join(methods))
    tables, info = [], {"split": split, "rows": len(rows), "methods": list(methods), "repeats": repeats,
                        "max_rows": max_rows, "seed": seed, "share": share, "manifest": manifest.path}
    if "permutation" in methods:
        predict = runner(model)
        table = permutation_importance(lambda x: predict(x)[CTR].reshape(-1), rows, input_units(manifest),
                                       repeats=repeats, seed=seed, progress=progress)
        info["baseline_auc"] = table.attrs["baseline_auc"]
        tables.append(table)
    if "embedding" in methods:
        tables.append(embedding_magnitude(model, manifest, rows))
    if "tree" in methods:
        train = load_rows(manifest, "train", max_rows=max_rows, seed=seed)
        table = tree_importance(manifest, train, rows, repeats=repeats, seed=seed)
        info.update(tree_auc=table.attrs["tree_auc"], tree_train_rows=len(train))
        tables.append(table)
    result = rank(tables, manifest, share)
    info["notes"] = [f"history / multi-valued inputs are permuted with their length; the tree skips them: "
                     f"{', '.join(manifest.list_inputs)}"] if manifest.list_inputs else []
    result.info = info
    return result


def write_report(result: Importance, out_dir: str) -> dict[str, str]:
    """Write ``importance.md``, ``importance.json`` and ``importance.png`` (one bar panel per method) into
    ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, f"importance.{name}") for name in ("md", "json", "png")}
    info = result.info
    text = [f"# Feature importance ({info.get('split')} split, {info.get('rows')} rows)"]
    if "baseline_auc" in info:
        text.append(f"permutation: pCTR AUC drop when the feature is shuffled across the rows (baseline AUC "
                    f"{info['baseline_auc']:.4f}), mean and std of {info['repeats']} shuffles.")
    if "tree_auc" in info:
        text.append(f"tree: the same for a HistGradientBoosting classifier fitted on {info['tree_train_rows']} train "
                    f"rows of the raw features (its validation AUC {info['tree_auc']:.4f}).")
    if "embedding" in result.table:
        text.append("embedding: mean L2 norm of the feature's embedding rows the split's examples look up.")
    text += [result.markdown(), f"Suggested real-time features ({result.ranked_by}, {info.get('share')} of the total "
             f"positive importance): {', '.join(result.suggested) or 'none'}", *info.get("notes", [])]
    with open(files["md"], "w") as f:
        f.write("\n\n".join(text) + "\n")
    with open(files["json"], "w") as f:
        json.dump(result.to_json(), f, indent=2, default=float)
    panels = {m: (list(result.table.index), result.table[m].to_numpy(dtype=float),
                  result.table[f"{m}_std"].to_numpy(dtype=float) if f"{m}_std" in result.table else None)
              for m in METHODS if m in result.table}
    plots.importance_bars(panels, files["png"], title=f"Feature importance, ranked by {result.ranked_by}")
    return files
