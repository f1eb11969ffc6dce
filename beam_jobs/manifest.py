"""``manifest.json``: the contract later jobs read, and its readable summary.

Shape: docs/architecture.md "Data contract".
"""

from __future__ import annotations

from typing import Any

from beam_jobs.history import history_block
from beam_jobs.options import SPLITS, Plan
from beam_jobs.posterior import BetaPrior
from beam_jobs.stats import Tally, mean_std
from tfads.core.schema import DerivedField, Schema

DTYPES = {"string": "string", "int": "int64", "float": "float32"}
POSTERIOR_PATH = "posterior/stats.jsonl"


def vocab_path(feature: str) -> str:
    """Vocabulary file of ``feature``, relative to the output directory."""
    return f"vocab/{feature}.txt"


def feature_entries(
    schema: Schema, tally: Tally, vocab_sizes: dict[str, int], oov: dict[str, dict[str, int]]
) -> dict[str, dict[str, Any]]:
    """The manifest's ``features`` block: kind, dtype and the statistics each kind needs."""
    out: dict[str, dict[str, Any]] = {}
    for name, f in schema.features.items():
        dtype = "string" if isinstance(f, DerivedField) else DTYPES[f.type]
        entry: dict[str, Any] = {"kind": f.feature, "dtype": dtype, "domain_aware": f.domain_aware,
                                 "calibration": f.calibration}
        if getattr(f, "multi", False):
            entry.update(multi=True, max_len=f.max_len, truncated=int(tally.multi_truncated.get(name, 0)))
        if f.feature == "categorical":
            entry.update(vocab=vocab_path(name), vocab_size=vocab_sizes[name], out_of_vocab=oov[name])
        elif f.feature == "hashed":
            entry["hash_bins"] = f.hash_bins
        else:
            mean, std = mean_std(tally.numeric[name])
            entry.update(log=f.log, mean=mean, std=std, boundaries=list(f.boundaries or []))
        out[name] = entry
    return out


def split_rule(schema: Schema, plan: Plan) -> dict[str, Any]:
    """How the rows were split: ``by`` and, by time or ratio, the first second of each held-out split."""
    if plan.cuts is None:
        return {"by": "day"}
    return {"by": schema.splits.by, **dict(zip(("valid_from", "calib_from", "test_from"), plan.cuts, strict=True))}


def build_manifest(
    *, schema: Schema, schema_mapping: dict, tally: Tally, plan: Plan, out: str,
    vocab_sizes: dict[str, int], oov: dict[str, dict[str, int]], priors: dict[str, dict[str, BetaPrior]],
    build: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the manifest; file paths are made relative to ``out``."""
    def rel(path: str) -> str:
        return path[len(out.rstrip("/")) + 1:] if path.startswith(out) else path

    # Output units with examples (a day, or a (day, split) when splitting by time), by day and by split.
    units = {u: plan.unit_split(u) for u in sorted(tally.days)}
    days = {}
    for day in sorted({d for d, _ in units.values()}):
        mine = [u for u, (d, _) in units.items() if d == day]
        days[day] = {"files": [rel(p) for u in mine for p in tally.files.get(u, [])],
                     "examples": sum(tally.days[u]["examples"] for u in mine)}
    split_block = {}
    for name in SPLITS:
        members = [u for u, (_, s) in units.items() if s == name]
        keys = ("examples", "clicks", "conversions", "feed")
        c = {k: sum(tally.days[u].get(k, 0) for u in members) for k in keys}
        split_block[name] = {
            "days": plan.splits[name] if plan.cuts is None else sorted({units[u][0] for u in members}),
            "files": [rel(p) for u in members for p in tally.files.get(u, [])],
            "examples": c["examples"], "feed_examples": c["feed"], "clicks": c["clicks"],
            "conversions": c["conversions"], "ctr": c["clicks"] / c["examples"] if c["examples"] else 0.0,
            "cvr": c["conversions"] / c["clicks"] if c["clicks"] else 0.0,
        }
    inputs = {log: {"read": c["read"], "valid": c["read"] - c["dead_letter"], "dead_letter": c["dead_letter"]}
              for log, c in sorted(tally.inputs.items())}
    all_days = sorted(days)
    return {
        "version": 1,
        "schema": schema_mapping,
        "features": feature_entries(schema, tally, vocab_sizes, oov),
        "vocab": {"min_count": schema.vocab.min_count, "top_k": schema.vocab.top_k},
        "key": schema.key,
        "timestamp": schema.timestamp,
        "raw_dtypes": {name: DTYPES[f.type] for name, f in schema.fields.items()},
        "labels": schema.labels.columns,
        "label_roles": schema.labels.roles,
        "user_key": schema.user_key,
        "domain": schema.domain or (schema.domain_features[0] if schema.domain_features else None),
        "weight": schema.weight_feature,
        "source": schema.source_feature,
        "split_rule": split_rule(schema, plan),
        "splits": split_block,
        "days": days,
        "inputs": inputs,
        "dead_letter": {"files": [rel(p) for p in tally.dead_files],
                        "by_reason": dict(sorted(tally.reasons.items()))},
        "posterior": {"path": POSTERIOR_PATH,
                      "priors": {f: {r: {"alpha": p.alpha, "beta": p.beta} for r, p in rates.items()}
                                 for f, rates in priors.items()}},
        "date_range": [all_days[0], all_days[-1]] if all_days else [],
        "history": history_block(schema, tally.history_truncated),
        "build": build,
    }


def summary_text(manifest: dict[str, Any]) -> str:
    """A few readable lines: inputs, dead letters, splits, vocabulary sizes."""
    lines = ["inputs (read = valid + dead_letter):"]
    for log, c in manifest["inputs"].items():
        lines.append(f"  {log:<12} read {c['read']:>10,}  valid {c['valid']:>10,}  dead_letter {c['dead_letter']:>8,}")
    reasons = ", ".join(f"{k} {v:,}" for k, v in manifest["dead_letter"]["by_reason"].items()) or "none"
    lines.append(f"dead letters by reason: {reasons}")
    lines.append("splits:")
    for name, s in manifest["splits"].items():
        span = f"{s['days'][0]}..{s['days'][-1]}" if s["days"] else "-"
        lines.append(f"  {name:<6} {span:<22} examples {s['examples']:>10,} (feed {s['feed_examples']:,})"
                     f"  ctr {s['ctr']:.4f}  cvr {s['cvr']:.4f}")
    for name, h in manifest.get("history", {}).items():
        window = "" if h["window_s"] is None else f" within {h['window_s']:,} s"
        lines.append(f"history {name}: the user's last {h['max_len']} {h['field']} ({h['events']} events{window}), "
                     f"truncated for {h['truncated']:,} examples")
    vocab = ", ".join(f"{n} {f['vocab_size']}" for n, f in manifest["features"].items() if "vocab_size" in f)
    lines.append(f"vocabulary sizes: {vocab}")
    rules = manifest.get("vocab", {})
    dropped = [f"{n} {f['out_of_vocab']['below_min_count']:,}" for n, f in manifest["features"].items()
               if f.get("out_of_vocab", {}).get("below_min_count")]
    if dropped:
        lines.append(f"values seen fewer than vocab.min_count={rules.get('min_count')} times in train (-> OOV): "
                     + ", ".join(dropped))
    return "\n".join(lines)
