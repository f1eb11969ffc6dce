"""``tfads evaluate``: metrics JSON, per-field metrics and plots for a trained model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a `tfads train` or `tfads calibrate` output dir")
    parser.add_argument("--data", required=True, help="manifest.json of the Beam job")
    parser.add_argument("--split", default="test", choices=["train", "valid", "calib", "test"])
    parser.add_argument("--logs", default=None, help="the datagen logs dir: adds the oracle metrics of the true "
                        "probabilities and, for ESMM, pCVR / pCTCVR over every impression against them")
    parser.add_argument("--out", default=None, help="report dir (default: <model-dir>/eval_<split>)")
    parser.add_argument("--by", nargs="+", default=None, metavar="FIELD",
                        help="pCTR AUC / GAUC / PCOC / RCE per value of these fields, with their impression-weighted "
                        "mean, written as by_<field>.csv; for ESMM also pCTCVR AUC / PCOC / RCE as "
                        "by_<field>_ctcvr.csv (default: the domain-aware and the calibration fields)")


def run(args: argparse.Namespace) -> int:
    import os

    from tfads.core.configtools import ConfigError
    from tfads.evaluate import evaluate_frame, write_report
    from tfads.core.manifest import load_manifest
    from tfads.predict import predict_split
    from tfads.sparsity import scenario_sparsity
    from tfads.train import load_trained_model
    from tfads.truth import attach_truth

    manifest = load_manifest(args.data)
    model = load_trained_model(args.model_dir)
    scored = predict_split(model, manifest, args.split)
    if args.logs:
        scored = attach_truth(scored, args.logs, manifest.key)
    by = args.by or list(dict.fromkeys([*manifest.domain_features, *manifest.calibration_fields]))
    unknown = [f for f in by if f not in manifest.features]
    if unknown:
        raise ConfigError(f"--by {unknown}: not features of {args.data} (features: {', '.join(manifest.features)})")
    evaluation = evaluate_frame(scored, field=manifest.domain, users=manifest.user_key, by=by)
    out = args.out or os.path.join(args.model_dir, f"eval_{args.split}")
    sparsity = scenario_sparsity(model, manifest, args.split)
    files = write_report(evaluation, scored, out, model_name=model.name, sparsity=sparsity)
    print(evaluation.table())
    for name, table in evaluation.by_field.items():
        mean = table.iloc[-1]
        print(f"by {name} ({len(table) - 1} values): weighted mean AUC {mean['auc']:.4f}  GAUC {mean['gauc']:.4f}  "
              f"PCOC {mean['pcoc']:.4f}  Field-RCE {mean['rce']:.4f}")
    for name, table in evaluation.ctcvr_by_field.items():
        mean = table.iloc[-1]
        oracle = f"  (oracle AUC {mean['oracle_auc']:.4f})" if "oracle_auc" in table else ""
        print(f"pCTCVR by {name} ({len(table) - 1} values): weighted mean AUC {mean['auc']:.4f}  "
              f"PCOC {mean['pcoc']:.4f}  Field-RCE {mean['rce']:.4f}{oracle}")
    print("\n".join(f"wrote {path}" for path in files.values()))
    return 0
