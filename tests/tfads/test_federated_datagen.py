"""The generator's media party (tfads.datagen.media): its own file, its own random stream, signal in the truth."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tfads.cli import main
from tfads.datagen import generate
from tfads.datagen.media import MEDIA_TABLE, MEDIA_TAGS, MediaPlan
from tfads.datagen.world import World

SMALL = {"days": 2, "impressions_per_day": 2000, "seed": 5, "progress": False}


def _lines(path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    plain, media = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("media")
    generate(str(plain), **SMALL)
    info = generate(str(media), media_plan=MediaPlan(enabled=True, coverage=0.7), **SMALL)
    return plain, media, info


def test_media_rows_go_to_the_media_directory_only(both):
    plain, media, info = both
    assert not (plain / "media").exists()
    assert info["settings"]["media"]["coverage"] == 0.7 and MEDIA_TABLE in info["files"]
    # impressions are drawn before the truth: the same lines with and without the media party
    for day in info["dates"]:
        rel = f"impressions/{day}/part-00000.jsonl.gz"
        assert (plain / rel).read_bytes() == (media / rel).read_bytes()
    for path in media.rglob("*.jsonl.gz"):  # no ad-side log names the media features
        if "media" not in path.relative_to(media).parts:
            assert b'"tags"' not in gzip.decompress(path.read_bytes())
    table = _lines(media / MEDIA_TABLE)
    assert all(len(row["tags"]) == MEDIA_TAGS for row in table)
    users = np.array([row["user_id"] for row in table])
    seen = np.unique([row["user_id"] for day in info["dates"]
                      for row in _lines(media / f"impressions/{day}/part-00000.jsonl.gz")])
    covered = np.isin(seen, users).mean()
    assert 0.6 < covered < 0.8  # coverage 0.7 of the ad logs' users
    extra = np.setdiff1d(users, seen)  # media-only users, about a quarter of the covered ones
    assert 0.15 < len(extra) / np.isin(seen, users).sum() < 0.35


def test_default_world_is_unchanged_and_the_media_term_is_signal():
    plain, world = World(2), World(2, media_plan=MediaPlan(enabled=True))
    assert plain.media is None
    x = plain.sample(np.random.default_rng(0), 20_000, 0, 0)
    t = x["second"] / 86400.0
    base_ctr, base_cvr = plain.probabilities(x, t)
    ctr, cvr = world.probabilities(x, t)
    term_ctr, term_cvr = world.media.logits(x["user_id"], x["category"])
    assert 0.6 < term_ctr.std() < 1.0 and 0.6 < term_cvr.std() < 1.0  # ctr_scale = cvr_scale = 0.8
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    # the logits differ by the media term plus the re-solved intercept
    assert np.corrcoef(logit(ctr) - logit(base_ctr), term_ctr)[0, 1] > 0.999
    assert np.corrcoef(logit(cvr) - logit(base_cvr), term_cvr)[0, 1] > 0.999
    # the observed tags carry the preference: a least-squares read-out recovers most of it
    users = np.unique(x["user_id"])[:3000]
    table = world.media.table(users)
    tags = np.stack(table["tags"].to_numpy())
    pref = world.media.pref[table["user_id"].to_numpy()]
    fit = tags @ np.linalg.lstsq(tags, pref, rcond=None)[0]
    assert 1 - ((fit - pref) ** 2).sum() / (pref**2).sum() > 0.8
    with pytest.raises(ValueError, match="coverage must be in"):
        MediaPlan(coverage=1.5)


def test_datagen_cli_media_flags(tmp_path, capsys):
    out = tmp_path / "logs"
    assert main(["datagen", "--out", str(out), "--days", "1", "--impressions-per-day", "500", "--media-features",
                 "--media-coverage", "0.5", "--no-progress"]) == 0
    assert "media party's user table" in capsys.readouterr().out
    settings = json.loads((out / "datagen.json").read_text())["settings"]
    assert settings["media"]["coverage"] == 0.5 and (out / MEDIA_TABLE).is_file()
