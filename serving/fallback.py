"""Fallback predictions when the model server cannot answer: the Beam job's posterior CTR/CVR.

``posterior/stats.jsonl`` holds one line per (field, value) of the train split with Beta-smoothed
rates. A candidate takes the smoothed rates of the first field in ``fields`` whose value has at least
``min_impressions`` training impressions (finest first, e.g. campaign, advertiser, scenario); with
no such value it gets no bid. Without a fallback the client does not bid while the server is unavailable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class PosteriorFallback:
    """Smoothed (pCTR, pCVR) per candidate from ``posterior/stats.jsonl``."""

    def __init__(self, rates: Mapping[tuple[str, str], tuple[float, float]], fields: Sequence[str]) -> None:
        self.rates = dict(rates)
        self.fields = list(fields)

    @classmethod
    def load(cls, path: str | Path, fields: Sequence[str], min_impressions: int = 0) -> PosteriorFallback:
        """Read the stats file, keeping values of ``fields`` with at least ``min_impressions``.

        Raises:
          FileNotFoundError: no file at ``path``.
          ValueError: a line that is not JSON or lacks a key (names the file and line).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: posterior stats file not found (written by `tfads build`)")
        wanted = set(fields)
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        with path.open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = (str(row["field"]), str(row["value"]))
                    ctr, cvr, imps = float(row["ctr_smoothed"]), float(row["cvr_smoothed"]), int(row["impressions"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path}:{number}: bad posterior stats line: {e}") from e
                if key[0] in wanted and imps >= min_impressions:
                    rates[key] = (ctr, cvr)
        return cls(rates, fields)

    def predict(self, candidates: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(pCTR, pCVR) arrays; NaN for a candidate none of whose fields has statistics."""
        ctr = np.full(len(candidates), np.nan)
        cvr = np.full(len(candidates), np.nan)
        for i, features in enumerate(candidates):
            for name in self.fields:
                hit = self.rates.get((name, str(features.get(name))))
                if hit is not None:
                    ctr[i], cvr[i] = hit
                    break
        return ctr, cvr
