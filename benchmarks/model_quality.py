"""Model quality on synthetic 300-scenario data: DNN, DCNv2, STAR, MMoE, PLE and DCNv2 + AdaSparse (3 forms).

Generates logs (``tfads.datagen``), runs the Beam job, trains every model with the same embeddings,
deep units, epochs and seed (``configs/default.yaml`` unless overridden), scores the test split and
prints AUC, LogLoss, GAUC, the gap to the oracle AUC (true probabilities), a paired-bootstrap 95 %
interval of the AUC difference to DCNv2 (over test rows only: retraining the same model moves its AUC
by up to about 0.003, see benchmarks/results/model_quality.md), and for the AdaSparse models the UPR: the share of
scenarios whose test AUC beats DCNv2's (all scenarios with both labels, and those with >= 100
clicks). MMoE and PLE run in their multi-scene use (one output for both towers, gates reading x0 and the
domain embedding; docs/methods/models.md "MMoE and PLE"). Then three analyses: UPR per bin of scenario clicks
beside a null (DCNv2 retrained against itself), the domain headroom (what each model carries of the true
logit's domain-specific parts and what the rest would add, from the generator's own parameters) and, for
the pruning AdaSparse models, whether their masks follow the generator's scenario clusters. For the CVR head
(every model here is ESMM) a second table: pCVR on clicked rows, pCVR over every test impression against the
generator's true pCVR, pCTCVR overall and per scenario and advertiser, beside the oracle. Writes
``model_quality.json`` and ``per_scenario_auc.png`` under ``--out``.

    python -m benchmarks.model_quality                       # 10 days x 300k: 2.1M train rows
    python -m benchmarks.model_quality --days 8 --impressions-per-day 100000 --models dnn,dcnv2
    python -m benchmarks.model_quality --models dcnv2,dcnv2_binarization --repeats 3   # with training noise
    python -m benchmarks.model_quality --rotation-per-day 0 --out bench_out/mq_nodrift  # counterfactual: no drift

With ``--repeats N`` every model is trained N times (train seeds seed, seed + 1, ...); the table then
shows means over the trainings, the AUC range, and dAUC as the mean of the N paired differences (repeat
k of a model against repeat k of DCNv2) with a bootstrap interval of that mean.

Data and per-model results are cached under ``--out`` (keyed by their settings), so a re-run only
trains the models whose configuration changed.

User-history variants (no history / mean-pooled / DIN, with their costs) live in ``benchmarks/history_quality.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfads.core.experiment import DEFAULT_EXPERIMENT, ExperimentConfig, ModelConfig, load_experiment
from tfads.entire_space import TRUE, cvr_summary, oracle_frame
from tfads.metrics import auc, bootstrap_ci, gauc, logloss, metrics_table, per_field_auc
from benchmarks.results import add_results_argument, publish

BASELINE = "dcnv2"
AGAINST_COLUMN = "--config's model - this"  # rows '<model>@<yaml>' of --against
CVR_TITLE = ("pCVR on clicked test rows; pCVR over every test impression against the true pCVR (docs/methods/"
             "metrics.md); pCTCVR over every impression and per field value (impression-weighted mean AUC, Field-RCE)")
MIN_CLICKS = 100  # scenarios with at least this many test clicks for the "UPR (>=100 clicks)" column
VARIANTS: dict[str, dict[str, Any]] = {
    "dnn": {"backbone": "dnn", "adasparse": None},
    "dcnv2": {"backbone": "dcnv2", "adasparse": None},
    "star": {"backbone": "star", "adasparse": None},
    "mmoe": {"backbone": "mmoe", "adasparse": None, "moe": {"use": "scenes", "gate_input": "features_domain"}},
    "ple": {"backbone": "ple", "adasparse": None, "moe": {"use": "scenes", "gate_input": "features_domain"}},
    "dcnv2_fusion": {"backbone": "dcnv2", "adasparse": "fusion"},
    "dcnv2_binarization": {"backbone": "dcnv2", "adasparse": "binarization"},
    "dcnv2_scaling": {"backbone": "dcnv2", "adasparse": "scaling"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impressions-per-day", type=int, default=300_000)
    p.add_argument("--days", type=int, default=10, help="the last 3 days are valid / calib / test")
    p.add_argument("--epochs", type=int, default=None, help="default: the experiment's train.epochs")
    p.add_argument("--models", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--out", default="bench_out/model_quality")
    p.add_argument("--config", default=str(DEFAULT_EXPERIMENT), help="experiment YAML the variants start from")
    p.add_argument("--learning-rate", type=float, default=None, help="override train.learning_rate")
    p.add_argument("--embedding-dim", type=int, default=None, help="override model.embedding_dim")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument(
        "--rotation-per-day",
        type=float,
        default=None,
        help="counterfactual data: drift of the generator's group x category cross in radians/day "
        "(default: the generator's, 0.15; 0 = stationary)",
    )
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples (0 = off)")
    p.add_argument("--repeats", type=int, default=1, help="trainings per model (train seeds seed, seed + 1, ...)")
    p.add_argument(
        "--against", nargs="+", default=[], metavar="YAML",
        help="also train every model from each of these experiment YAMLs (rows '<model>@<file stem>', each with "
        "the paired AUC difference of --config's model minus it), e.g. the default against a previous default",
    )
    add_results_argument(p)
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in VARIANTS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.days < 4:
        p.error("--days must be >= 4 (valid, calib and test take one day each)")
    missing = [path for path in args.against if not os.path.isfile(path)]
    if missing:
        p.error(f"--against {missing}: file not found")
    return args


def variant_config(base: ExperimentConfig, name: str, args: argparse.Namespace, repeat: int = 0) -> ExperimentConfig:
    """``base`` with the backbone / AdaSparse form (and MoE settings) of variant ``name``, the command-line
    overrides and the train seed of training ``repeat``."""
    v = VARIANTS[name]
    m: ModelConfig = base.model
    form = v["adasparse"]
    ada = dataclasses.replace(m.adasparse, enabled=form is not None, form=form or m.adasparse.form)
    moe = dataclasses.replace(m.moe, **v.get("moe", {}))
    model = dataclasses.replace(m, backbone=v["backbone"], adasparse=ada, moe=moe)
    if args.embedding_dim:
        model = dataclasses.replace(model, embedding_dim=args.embedding_dim)
    train = dataclasses.replace(base.train, seed=base.train.seed + repeat)
    if args.epochs:
        train = dataclasses.replace(train, epochs=args.epochs)
    if args.learning_rate:
        train = dataclasses.replace(train, learning_rate=args.learning_rate)
    return dataclasses.replace(base, model=model, train=train)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def generator_digest() -> str:
    """Digest of the generator's source (``tfads/datagen/*.py``): a changed generator means new data."""
    import tfads.datagen

    h = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(tfads.datagen.__file__), "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def prepare_data(
    out: str, days: int, impressions_per_day: int, seed: int, rotation_per_day: float | None = None
) -> tuple[str, str]:
    """Synthetic logs + Beam job under ``out`` (reused when the settings and generator match); (logs dir, manifest).

    ``rotation_per_day`` overrides the generator's ``ROTATION_PER_DAY`` for the rest of the process (a
    counterfactual without, or with other, drift; ``domain_parts`` then uses it as well)."""
    logs, data = os.path.join(out, "logs"), os.path.join(out, "data")
    stamp = os.path.join(out, "data.json")
    settings = {"days": days, "impressions_per_day": impressions_per_day, "seed": seed, "generator": generator_digest()}
    if rotation_per_day is not None:
        from tfads.datagen import world

        world.ROTATION_PER_DAY = rotation_per_day
        settings["rotation_per_day"] = rotation_per_day
    manifest = os.path.join(data, "manifest.json")
    if os.path.exists(stamp) and os.path.exists(manifest):
        with open(stamp) as f:
            if json.load(f) == settings:
                return logs, manifest
    from tfads.jobs.dataset import synthetic_dataset

    t = time.monotonic()
    shutil.rmtree(data, ignore_errors=True)
    synthetic_dataset(out, days=days, impressions_per_day=impressions_per_day, seed=seed, workers=2)
    print(f"datagen + Beam job: {days} days x {impressions_per_day} in {time.monotonic() - t:.0f} s", flush=True)
    with open(stamp, "w") as f:
        json.dump(settings, f)
    return logs, manifest


def _run_dir(out: str, name: str, repeat: int) -> str:
    return os.path.join(out, "runs", name if repeat == 0 else f"{name}-r{repeat}")


def load_cached_run(run_dir: str, key: str, label: str) -> dict[str, Any] | None:
    """A run's cached record and scored frame (``result.json``, ``scored.parquet`` under ``run_dir``) when they
    were made with ``key`` (a digest of the config and the data); None otherwise."""
    result_path, scored_path = os.path.join(run_dir, "result.json"), os.path.join(run_dir, "scored.parquet")
    if not (os.path.exists(result_path) and os.path.exists(scored_path)):
        return None
    with open(result_path) as f:
        cached = json.load(f)
    if cached["key"] != key:
        return None
    print(f"{label}: cached ({run_dir})", flush=True)
    return {**cached, "scored": pd.read_parquet(scored_path)}


def save_run(run_dir: str, record: dict[str, Any], scored: pd.DataFrame) -> dict[str, Any]:
    """Cache a run (what ``load_cached_run`` reads back), drop its training backup; the record with the frame."""
    scored.to_parquet(os.path.join(run_dir, "scored.parquet"))
    with open(os.path.join(run_dir, "result.json"), "w") as f:
        json.dump(record, f, indent=2)
    shutil.rmtree(os.path.join(run_dir, "model", "backup"), ignore_errors=True)
    return {**record, "scored": scored}


def cached_run(out: str, run_dir: str, parts: dict[str, Any], label: str,
               fit: Callable[[], tuple[dict[str, Any], pd.DataFrame]]) -> dict[str, Any]:
    """The run under ``run_dir``, keyed by a digest of ``parts`` and the data (``out/data.json``): read back when
    the key matches, else ``fit()`` (record, scored frame) in an emptied ``run_dir`` (never resuming a stale
    BackupAndRestore state) and cached; the record, with its key and the frame."""
    with open(os.path.join(out, "data.json")) as f:
        key = _digest({**parts, "data": f.read()})
    cached = load_cached_run(run_dir, key, label)
    if cached is not None:
        return cached
    shutil.rmtree(run_dir, ignore_errors=True)
    record, scored = fit()
    return save_run(run_dir, {"key": key, **record}, scored)


def cvr_fields(manifest: Any) -> list[str]:
    """The fields pCTCVR is tabled by: the domain and the calibration fields (scenario, advertiser)."""
    return list(dict.fromkeys([*([manifest.domain] if manifest.domain else []), *manifest.calibration_fields]))


def kept_columns(scored: pd.DataFrame, manifest: Any) -> pd.DataFrame:
    """The scored test rows' columns the evaluation reads: ids, labels, heads and the per-field fields."""
    wanted = ["trace_id", "scenario", "user_id", "click", "ctr", "conversion", "cvr", "ctcvr", *cvr_fields(manifest)]
    return scored[[c for c in dict.fromkeys(wanted) if c in scored]]


def run_model(name: str, config: ExperimentConfig, manifest_path: str, out: str, repeat: int = 0) -> dict[str, Any]:
    """Train, score the test split and return metrics plus the scored frame's key columns (cached)."""
    run_dir = _run_dir(out, name, repeat)
    return cached_run(out, run_dir, {"config": config.to_dict()}, name,
                      lambda: _fit_model(name, config, manifest_path, run_dir))


def _fit_model(name: str, config: ExperimentConfig, manifest_path: str, run_dir: str) -> tuple[dict, pd.DataFrame]:
    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.sparsity import scenario_sparsity
    from tfads.train import summary_line, train

    t = time.monotonic()
    print(f"\n=== {name}: training ===", flush=True)
    result = train(config, manifest_path, os.path.join(run_dir, "model"), verbose=2)
    train_s = time.monotonic() - t
    print(f"{name}: {summary_line(result.history)} ({train_s:.0f} s)", flush=True)
    manifest = load_manifest(manifest_path)
    scored = kept_columns(predict_split(result.model, manifest, "test"), manifest)
    sparsity = scenario_sparsity(result.model, manifest)
    pruned = None
    if sparsity is not None:
        matrix, layers, _ = sparsity
        pruned = {layer: float(share) for layer, share in zip(layers, matrix.mean(axis=1), strict=True)}
    record = {
        "config": config.to_dict(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": train_s,
        "best_val_ctr_auc": max(result.history.get("val_ctr_auc", [float("nan")])),
        "pruned_share_per_layer": pruned,
    }
    return record, scored


def test_truth(logs: str, manifest_path: str) -> pd.DataFrame:
    """(trace_id, true_ctr, true_cvr, true_ctcvr) of the test days only (reading every day's truth is slow at this
    size)."""
    from tfads.core.manifest import load_manifest

    days = load_manifest(manifest_path).data["splits"]["test"]["days"]
    files = sorted(f for d in days for f in glob.glob(os.path.join(logs, "truth", d, "*.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"{logs}: no truth files for the test days {days}")
    truth = pd.concat([pd.read_json(f, lines=True, dtype={"trace_id": str}) for f in files], ignore_index=True)
    truth = truth.rename(columns={"p_ctr": "true_ctr", "p_cvr": "true_cvr"})
    return truth.assign(true_ctcvr=truth["true_ctr"] * truth["true_cvr"])[["trace_id", *TRUE.values()]]


def _test_day_world(logs: str, manifest_path: str) -> tuple[Any, dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """The generator's world and the test day's impressions rebuilt from its seed: (world, feature indices,
    trace ids, times in days, middle of the training window in days). Checked against the logged truth."""
    import datetime as dt

    from tfads.datagen import world as W
    from tfads.datagen.writer import trace_ids
    from tfads.core.manifest import load_manifest
    from tfads.core.schema import load_schema

    with open(os.path.join(logs, "datagen.json")) as f:
        meta = json.load(f)
    seed, per_day, start = meta["seed"], meta["settings"]["impressions_per_day"], meta["start_date"]
    splits = load_manifest(manifest_path).data["splits"]
    day_of = {d: i for i, d in enumerate(meta["dates"])}
    (test_day,) = [day_of[d] for d in splits["test"]["days"]]
    train_mid = float(np.mean([day_of[d] for d in splits["train"]["days"]])) + 0.5
    age = load_schema().fields.get("age")
    interest_scale = meta["settings"].get("interest_scale", 0.0)  # absent: written before the term existed
    world = W.World(seed, (int(age.min or 0), int(age.max or 120)) if age else (12, 100), interest_scale)
    weekday = (dt.date.fromisoformat(start) + dt.timedelta(days=test_day)).weekday()
    x = world.sample(np.random.default_rng([seed, 10, test_day]), per_day, test_day, weekday)  # generator's stream
    return (
        world,
        x,
        trace_ids(seed, test_day * per_day + np.arange(per_day)),
        test_day + x["second"] / 86400.0,
        train_mid,
    )


def domain_parts(test_day: tuple, truth: pd.DataFrame) -> pd.DataFrame:
    """Per test row: the true CTR logit ``z`` and its domain-specific parts (synthetic data only);
    ``test_day`` from ``_test_day_world``.

    ``cluster_cross``: the scenario cluster's deviation from the mean group x category cross matrix,
    ``g' (M_c - mean M) cat(t)``; ``cluster_cross_train``: the same with the category side as it was in the
    middle of the training window (what a model of the training days can know: the category side
    drifts); ``cluster_weights`` / ``scenario_weights``: the cluster's mean embedding weights minus the
    global mean, and the scenario's own deviation from its cluster (neither drifts).
    """
    from tfads.datagen import world as W

    world, x, tid, t, train_mid = test_day
    e = world.ctr
    cluster = world.scenario_cluster[x["scenario"]]
    group = e.group_emb[x["user_group"]]
    deviation = e.cluster_cross - e.cluster_cross.mean(axis=0)

    def cluster_cross(days: np.ndarray) -> np.ndarray:
        theta = W.ROTATION_PER_DAY * days[:, None]
        cat = e.cat_emb_a[x["category"]] * np.cos(theta) + e.cat_emb_b[x["category"]] * np.sin(theta)
        return np.einsum("nr,nrs,ns->n", group, deviation[cluster], cat)

    feats = np.concatenate([emb[x[name]] for name, emb in world.emb.items()], axis=1)
    w_cluster = np.stack([e.scenario_w[world.scenario_cluster == c].mean(axis=0) for c in range(W.N_CLUSTERS)])
    frame = pd.DataFrame(
        {
            "trace_id": tid,
            "z": np.log(x["p_ctr"] / (1.0 - x["p_ctr"])),
            "cluster_cross": cluster_cross(t),
            "cluster_cross_train": cluster_cross(np.full_like(t, train_mid)),
            "cluster_weights": np.einsum("nd,nd->n", w_cluster[cluster] - e.scenario_w.mean(axis=0), feats),
            "scenario_weights": np.einsum("nd,nd->n", e.scenario_w[x["scenario"]] - w_cluster[cluster], feats),
        }
    )
    check = truth.merge(frame[["trace_id", "z"]], on="trace_id")
    p = 1.0 / (1.0 + np.exp(-check["z"].to_numpy()))
    if len(check) != len(truth) or not np.allclose(p, check["true_ctr"].to_numpy(), rtol=1e-4, atol=1e-7):
        raise RuntimeError("domain_parts: the rebuilt test day does not match the logged truth (generator changed?)")
    return frame


def _ols(target: np.ndarray, *columns: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(np.column_stack([np.ones_like(target), *columns]), target, rcond=None)[0][1:]


def domain_headroom(y: np.ndarray, parts: pd.DataFrame, preds: dict[str, list[np.ndarray]]) -> dict[str, dict]:
    """What each model carries of the domain-specific parts of the true logit and what the rest is worth.

    Per model (means over its trainings): the OLS coefficients of its test logit on the parts (1 = carried
    fully), and its AUC after adding the part it misses, ``(1 - coef) * part``, of the non-drifting
    weights, of the cluster cross as of the training window, and of both: the most any domain-adaptive
    layer could add on top of that model. The oracle row drops or replaces parts of the true logit instead.
    """
    z, cc, cct = parts["z"].to_numpy(), parts["cluster_cross"].to_numpy(), parts["cluster_cross_train"].to_numpy()
    weights = parts["cluster_weights"].to_numpy(), parts["scenario_weights"].to_numpy()
    rest = z - cc - weights[0] - weights[1]
    out: dict[str, dict] = {
        "oracle": {
            "AUC": auc(y, _sigmoid(z)),
            "without cluster cross": auc(y, _sigmoid(z - cc)),
            "cluster cross as of training": auc(y, _sigmoid(z - cc + cct)),
            "without cluster+scenario weights": auc(y, _sigmoid(z - weights[0] - weights[1])),
        }
    }
    for name, ps in preds.items():
        rows = []
        for p in ps:
            m = np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
            c_cross, c_cw, c_sw = _ols(m, rest, cc, *weights)[1:]
            (c_train,) = _ols(m, z - cc, cct)[1:]
            w_missing = (1 - c_cw) * weights[0] + (1 - c_sw) * weights[1]
            rows.append(
                [
                    auc(y, p),
                    c_cross,
                    c_cw,
                    c_sw,
                    c_train,
                    auc(y, _sigmoid(m + w_missing)),
                    auc(y, _sigmoid(m + (1 - c_train) * cct)),
                    auc(y, _sigmoid(m + w_missing + (1 - c_train) * cct)),
                ]
            )
        keys = [
            "AUC",
            "coef cluster cross",
            "coef cluster w",
            "coef scenario w",
            "coef cross as of training",
            "+ missing weights",
            "+ missing cross as of training",
            "+ both",
        ]
        out[name] = dict(zip(keys, np.mean(rows, axis=0).tolist(), strict=True))
    return out


def mask_sharing_of(
    runs: dict[str, list[dict[str, Any]]], out: str, manifest_path: str, world: Any
) -> dict[str, dict[str, float]]:
    """For every training of a pruning AdaSparse model: ``tfads.sparsity.mask_sharing`` of its test-day masks
    with the generator's scenario clusters as groups (never given to the model), per pruning layer."""
    from tfads.datagen import world as W
    from tfads.core.manifest import load_manifest
    from tfads.model_io import load_trained_model
    from tfads.sparsity import mask_sharing, scenario_report

    def cluster(scenario: str) -> int:
        media, _, slot = scenario.partition("|")
        try:
            return int(world.scenario_cluster[int(media[1:]) * W.N_SLOTS + int(slot[1:])])
        except ValueError:  # the OOV entry
            return -1

    manifest = load_manifest(manifest_path)
    found: dict[str, dict[str, float]] = {}
    for name, trainings in runs.items():
        if "@" in name or VARIANTS[name]["adasparse"] in (None, "scaling"):
            continue  # the --against configs' models are compared on AUC only
        for k in range(len(trainings)):
            model_dir = os.path.join(_run_dir(out, name, k), "model")
            report, scenarios = scenario_report(load_trained_model(model_dir), manifest, max_batches=150)  # whole day
            per_layer = mask_sharing(report, np.array([cluster(sc) for sc in scenarios]), min_rows=500)
            found[os.path.basename(_run_dir(out, name, k))] = {
                f"{layer.rsplit('/', 1)[-1]} {key}": v for layer, st in per_layer.items() for key, v in st.items()
            }
    return found


TRAFFIC_BINS = (0, 10, 30, 100, 300, np.inf)  # test clicks per scenario


def upr_by_traffic(scored: dict[str, list[pd.DataFrame]]) -> dict[str, dict[str, float]]:
    """UPR against DCNv2 per bin of scenario test clicks (mean over paired trainings k), with the null:
    DCNv2 retrained (training k + 1 against k), which shows what UPR noise alone gives."""
    base = scored[BASELINE]

    def share(mine: pd.DataFrame, ref: pd.DataFrame) -> pd.Series:
        y, scenario = ref["click"].to_numpy(), ref["scenario"]
        a, b = per_field_auc(y, mine["ctr"].to_numpy(), scenario), per_field_auc(y, ref["ctr"].to_numpy(), scenario)
        both = a.merge(b, on="value", suffixes=("", "_base")).dropna(subset=["auc", "auc_base"])
        bins = pd.cut(both["positives"], TRAFFIC_BINS, right=False)
        return (both["auc"] > both["auc_base"]).groupby(bins, observed=False).mean()

    pairs = {n: list(zip(fs, base, strict=False)) for n, fs in scored.items() if n != BASELINE}
    if len(base) > 1:
        pairs["dcnv2 retrained (null)"] = list(zip(base[1:], base[:-1], strict=False))
    out = {}
    for name, ps in pairs.items():
        mean = pd.concat([share(m, r) for m, r in ps], axis=1).mean(axis=1)
        out[name] = {str(k): float(v) for k, v in mean.items()}
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def paired_auc_diff(y: np.ndarray, ps: list[np.ndarray], qs: list[np.ndarray], reps: int,
                    groups: np.ndarray | None = None) -> list[float]:
    """Mean over repeats k of AUC(ps[k]) - AUC(qs[k]) on the same rows, with a paired percentile-bootstrap
    95 % interval. With ``groups`` (a label per row), AUC is the mean of the AUCs within each group."""
    def score(i: np.ndarray, p: np.ndarray) -> float:
        if groups is None:
            return auc(y[i], p[i])
        g = groups[i]
        return float(np.mean([auc(y[i][g == v], p[i][g == v]) for v in np.unique(groups)]))

    ci = bootstrap_ci(
        lambda idx: [np.mean([score(i, p) - score(i, q) for p, q in zip(ps, qs, strict=True)]) for i in idx],
        len(y),
        np.random.default_rng(0),
        reps=reps,
    )
    return [ci.estimate, ci.low, ci.high]


def upr(mine: pd.DataFrame, base: pd.DataFrame, min_clicks: int = 0) -> tuple[float, int]:
    """Share of scenarios (both AUCs defined, >= ``min_clicks`` positives) where ``mine`` beats ``base``."""
    both = mine.merge(base, on="value", suffixes=("", "_base")).dropna(subset=["auc", "auc_base"])
    both = both[both["positives"] >= min_clicks]
    return (float((both["auc"] > both["auc_base"]).mean()) if len(both) else float("nan")), len(both)


def _mean_per_field(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-scenario AUC frames of several trainings -> one frame with the mean AUC per scenario."""
    if len(frames) == 1:
        return frames[0]
    both = pd.concat(frames)
    mean = both.groupby("value", sort=False).agg(impressions=("impressions", "first"), positives=("positives", "first"))
    return mean.assign(auc=both.groupby("value", sort=False)["auc"].mean()).reset_index()


def evaluate(
    runs: dict[str, list[dict[str, Any]]], truth: pd.DataFrame, reps: int
) -> tuple[dict[str, dict[str, Any]], dict[str, pd.DataFrame]]:
    """Metric rows per model (means over its trainings, plus the oracle) and per-scenario AUC frames."""
    first = next(iter(runs.values()))[0]["scored"].merge(truth, on="trace_id", how="left")
    if first["true_ctr"].isna().any():
        raise RuntimeError("test rows without truth: are the logs and the Beam output from the same run?")
    y, truth, scenario = first["click"].to_numpy(), first["true_ctr"].to_numpy(), first["scenario"]
    for name, trainings in runs.items():
        if not all((run["scored"]["trace_id"].to_numpy() == first["trace_id"].to_numpy()).all() for run in trainings):
            raise RuntimeError(f"{name}: test rows differ from the other models'")
    preds = {name: [run["scored"]["ctr"].to_numpy() for run in trainings] for name, trainings in runs.items()}
    preds["oracle"] = [truth]
    per_scenario = {name: _mean_per_field([per_field_auc(y, p, scenario) for p in ps]) for name, ps in preds.items()}
    oracle_auc = auc(y, truth)
    base = preds.get(BASELINE)
    rows: dict[str, dict[str, Any]] = {}
    for name, ps in preds.items():
        aucs = [auc(y, p) for p in ps]
        row: dict[str, Any] = {
            "AUC": float(np.mean(aucs)),
            "LogLoss": float(np.mean([logloss(y, p) for p in ps])),
            "GAUC": float(np.mean([gauc(y, p, first["user_id"]) for p in ps])),
            "Oracle gap": oracle_auc - float(np.mean(aucs)),
        }
        if len(ps) > 1:
            row["AUC range"] = max(aucs) - min(aucs)
        reference = name.split("@")[0]
        if "@" in name and reference in preds and reps:
            row[f"dAUC {AGAINST_COLUMN} [95% CI]"] = paired_auc_diff(y, preds[reference], ps, reps)
        if base is not None and name != BASELINE:
            if reps:
                paired = ps * len(base) if len(ps) == 1 else ps  # the oracle is one "training"
                row["dAUC vs DCNv2 [95% CI]"] = paired_auc_diff(y, paired, base, reps)
            row["UPR"], row["scenarios"] = upr(per_scenario[name], per_scenario[BASELINE])
            row[f"UPR>={MIN_CLICKS}clk"], row[f"scen>={MIN_CLICKS}clk"] = upr(
                per_scenario[name], per_scenario[BASELINE], MIN_CLICKS
            )
        if name in runs:
            row.update(
                {
                    "epochs": round(float(np.mean([r["epochs_run"] for r in runs[name]])), 2),
                    "best epoch": round(float(np.mean([r.get("best_epoch", r["epochs_run"]) for r in runs[name]])), 2),
                    "train s": round(float(np.mean([r["train_seconds"] for r in runs[name]]))),
                }
            )
        rows[name] = row
    return rows, per_scenario


def cvr_rows(runs: dict[str, list[dict[str, Any]]], truth: pd.DataFrame, fields: list[str]) -> dict[str, dict]:
    """pCVR on clicked rows, pCVR over every test impression against the true pCVR, and pCTCVR overall and per
    field value (``tfads.entire_space.cvr_summary``) of each model with a cvr head (means over its trainings),
    and the oracle's row; empty when no model has one (e.g. runs cached before the CVR heads were kept)."""
    rows: dict[str, dict[str, float]] = {}
    oracle = None
    for name, trainings in runs.items():
        frames = [run["scored"].merge(truth, on="trace_id", how="left") for run in trainings]
        if not all("cvr" in f for f in frames):
            continue
        summaries = pd.DataFrame([cvr_summary(f, fields) for f in frames])
        rows[name] = summaries.mean().to_dict()
        oracle = oracle if oracle is not None else cvr_summary(oracle_frame(frames[0]), fields)
    return {**rows, "oracle": oracle} if oracle is not None else {}


def _display(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def cell(v: Any) -> Any:
        return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]" if isinstance(v, list) else v

    return {name: {k: cell(v) for k, v in row.items()} for name, row in rows.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    base = load_experiment(args.config)
    logs, manifest_path = prepare_data(out, args.days, args.impressions_per_day, args.seed, args.rotation_per_day)
    bases = {"": base, **{f"@{Path(path).stem}": load_experiment(path) for path in args.against}}
    runs: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for suffix, start in bases.items():
        for model in args.models.split(","):
            n = model + suffix
            try:
                runs[n] = [
                    run_model(n, variant_config(start, model, args, k), manifest_path, out, k)
                    for k in range(args.repeats)
                ]
            except ValueError as e:  # one broken variant must not cost the others' results
                failed[n] = f"{type(e).__name__}: {e}"
                print(f"{n}: FAILED: {failed[n]}", flush=True)
    if not runs:
        raise SystemExit(f"every model failed: {failed}")
    truth = test_truth(logs, manifest_path)
    rows, per_scenario = evaluate(runs, truth, args.bootstrap)
    from tfads.core.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    cvr = cvr_rows(runs, truth, cvr_fields(manifest))
    scored = {n: [r["scored"] for r in rs] for n, rs in runs.items()}
    traffic = upr_by_traffic(scored) if BASELINE in scored else {}
    first = scored[next(iter(scored))][0][["trace_id", "click"]]
    test_day = _test_day_world(logs, manifest_path)
    parts = first.merge(domain_parts(test_day, truth), on="trace_id", how="left")
    sharing = mask_sharing_of(runs, out, manifest_path, test_day[0])
    headroom = domain_headroom(
        first["click"].to_numpy(), parts, {n: [f["ctr"].to_numpy() for f in fs] for n, fs in scored.items()}
    )

    from tfads.plots import per_field_auc_vs_traffic

    png = per_field_auc_vs_traffic(
        per_scenario, os.path.join(out, "per_scenario_auc.png"), title="Test AUC per scenario vs traffic"
    )
    report = {
        "data": {
            "days": args.days,
            "impressions_per_day": args.impressions_per_day,
            "train_rows": manifest.split_count("train"),
            "test_rows": manifest.split_count("test"),
            "repeats": args.repeats,
        },
        "models": rows,
        "cvr": cvr,
        "upr_by_scenario_clicks": traffic,
        "domain_headroom": headroom,
        "mask_sharing": sharing,
        "pruned_share_per_layer": {
            n: [r["pruned_share_per_layer"] for r in rs] for n, rs in runs.items() if rs[0]["pruned_share_per_layer"]
        },
        "configs": {n: rs[0]["config"] for n, rs in runs.items()},
        "failed": failed,
        "plot": str(png),
    }
    with open(os.path.join(out, "model_quality.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    print(
        json.dumps(
            {k: report[k] for k in ("data", "pruned_share_per_layer", "failed", "plot")},
            indent=2,
            default=float,
        )
    )
    print()
    print(metrics_table(_display(rows)))
    if cvr:
        print(f"\n{CVR_TITLE}")
        print(metrics_table(cvr))
    if traffic:
        print("\nUPR per bin of scenario test clicks (null: DCNv2 retrained against itself)")
        print(metrics_table(traffic))
    print("\nDomain-specific parts of the true logit: carried (OLS coefficient) and AUC if the missing part were added")
    print(metrics_table(headroom))
    if sharing:
        print("\nAdaSparse masks on the test day: between-scenario share of mask variance; keep-profile correlation")
        print("of scenarios (>= 500 test rows) in the same generator cluster vs in different clusters")
        print(metrics_table(sharing))
    for n, message in failed.items():
        print(f"{n}: not measured: {message}")
    table = metrics_table(_display(rows), markdown=True)
    if cvr:
        table += f"\n\n{CVR_TITLE}\n\n{metrics_table(cvr, markdown=True)}"
    publish("model_quality", report, table, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
