"""Bid traffic from logged impressions: requests built from a manifest split, sending them, and a summary."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import pandas as pd

from serving.client import REQUEST_USER, BidClient, BidRequestError, BidResponse
from tfads.core.manifest import load_manifest


def split_rows(manifest_path: str, split: str = "test", limit: int | None = None) -> pd.DataFrame:
    """Raw features, key, timestamp and labels of a split's examples (first ``limit`` rows)."""
    from tfads.data import make_dataset

    manifest = load_manifest(manifest_path)
    ds = make_dataset(manifest.split_files(split), manifest, 1024, with_meta=True, for_training=False)
    parts, count = [], 0
    for batch in ds:
        parts.append({k: v.numpy() for k, v in batch.items()})
        count += len(parts[-1][manifest.timestamp])
        if limit is not None and count >= limit:
            break
    if not parts:
        raise ValueError(f"{manifest_path}: split {split!r} has no examples")
    frame = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    for col in frame.columns:
        if pd.api.types.is_object_dtype(frame[col].dtype):
            frame[col] = frame[col].str.decode("utf-8")
    return frame.head(limit) if limit is not None else frame


def opportunities(
    manifest_path: str, candidates: int, *, split: str = "test", limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Bid requests of ``candidates`` logged impressions of ``split`` sharing the primary domain (scenario)
    and the hour of day; at most ``limit`` requests (read from the first ``4 x limit x candidates`` rows).
    Candidates carry the logged raw fields, key and labels but no derived feature, as an ad server's
    requests would (the model computes those, decision 0027)."""
    manifest = load_manifest(manifest_path)
    rows = split_rows(manifest_path, split, limit=None if limit is None else 4 * limit * candidates)
    rows = rows.assign(_hour=(rows[manifest.timestamp] // 3600) % 24)
    groups = [c for c in (manifest.domain, "_hour") if c]
    requests = requests_from_rows(rows, candidates, seed=seed, group_by=groups, user_key=manifest.user_key,
                                  drop=list(manifest.derived))
    return requests if limit is None else requests[:limit]


def requests_from_rows(
    rows: pd.DataFrame, candidates: int, *, seed: int = 0, group_by: Sequence[str] = (),
    user_key: str | None = None, drop: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Impression opportunities of ``candidates`` logged impressions each, from the same group (values of
    ``group_by``, e.g. :func:`auction_groups`). Every candidate keeps its whole logged row (its own user,
    context, ad and key), so the model's prediction and the generator's truth refer to the same
    impression; the opportunity's user (for the A/B arm) is its first candidate's ``user_key`` value.
    Columns in ``drop`` (e.g. derived features, grouped by but never sent) are left out of the candidates.
    Leftovers of a group are dropped."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    keys = [k for k in group_by if k in rows.columns]
    rng = np.random.default_rng(seed)
    groups = rows.groupby(keys, sort=True) if keys else [((), rows)]
    requests = []
    for _, group in groups:
        order = rng.permutation(len(group))
        records = group.iloc[order].drop(columns=[c for c in drop if c in group.columns]).to_dict("records")
        for start in range(0, len(records) - candidates + 1, candidates):
            chunk = records[start:start + candidates]
            requests.append({
                "request_id": f"opp-{len(requests)}",
                REQUEST_USER: chunk[0].get(user_key, len(requests)) if user_key else len(requests),
                "features": {},
                "candidates": chunk,
            })
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def read_requests(path: str) -> list[dict[str, Any]]:
    """Bid requests from a JSONL file (one request mapping per line)."""
    requests = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    requests.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON: {e}") from e
    return requests


def send_bids(
    client: BidClient, requests: Sequence[dict[str, Any]], *, arm: str | None = None,
    output: IO[str] | None = None, quiet: bool = False,
) -> list[BidResponse]:
    """Send each request through ``client`` (to ``arm``, or by user hash); print one line per bid unless
    ``quiet``; write each response as JSON to ``output``. A rejected request is reported and skipped."""
    responses = []
    for request in requests:
        try:
            response = client.bid(request, arm=arm)
        except BidRequestError as e:
            print(f"rejected: {e}", file=sys.stderr)
            continue
        responses.append(response)
        if output:
            output.write(json.dumps(response.to_dict()) + "\n")
        if not quiet:
            winner = response.winner
            best = f"winner {winner} bid {response.bids[winner]:.4f} CPM" if winner is not None else "no bid"
            print(f"{response.request_id}: arm={response.arm} version={response.model_version} "
                  f"source={response.source} {best} ({response.latency_s * 1000:.1f} ms)")
    return responses


def summarize_responses(responses: Sequence[BidResponse]) -> str:
    """Requests, sources, versions and latency per arm, as a small text table."""
    lines = [f"{'arm':<12} {'requests':>8} {'model':>6} {'fallback':>8} {'none':>5} {'versions':<12} "
             f"{'p50 ms':>7} {'p99 ms':>7}"]
    for arm in sorted({r.arm for r in responses}):
        mine = [r for r in responses if r.arm == arm]
        sources = Counter(r.source for r in mine)
        versions = ",".join(str(v) for v in sorted({r.model_version for r in mine if r.model_version is not None}))
        ms = np.array([r.latency_s for r in mine]) * 1000
        lines.append(f"{arm:<12} {len(mine):>8} {sources['model']:>6} {sources['fallback']:>8} {sources['none']:>5} "
                     f"{versions or '-':<12} {np.percentile(ms, 50):>7.2f} {np.percentile(ms, 99):>7.2f}")
    return "\n".join(lines)
