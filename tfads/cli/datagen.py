"""``tfads datagen``: write synthetic ad logs with ground truth (see docs/methods/data.md "Synthetic data")."""

from __future__ import annotations

import argparse
import sys

from tfads.cli.arg_types import number_in, positive_int
from tfads.core.schema import DEFAULT_SCHEMA, load_schema
from tfads.datagen.media import MediaPlan
from tfads.datagen.world import INTEREST_SCALE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tfads datagen``."""
    parser.add_argument(
        "--out", required=True, help="output directory (replaced if it holds a previous datagen output)"
    )
    parser.add_argument("--days", type=positive_int, default=7, help="number of days (default 7)")
    parser.add_argument(
        "--impressions-per-day", type=positive_int, default=20000, help="impression lines per day (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, byte-identical files (default 0)")
    parser.add_argument(
        "--corrupt-rate",
        type=number_in(0.0, 0.5),
        default=0.0,
        help="share of malformed / orphan lines injected per log, in [0, 0.5] (default 0)",
    )
    parser.add_argument("--with-feed", action="store_true", help="also write the organic-feed log")
    parser.add_argument(
        "--interest-scale",
        type=number_in(0.0, 10.0),
        default=INTEREST_SCALE,
        help="strength of the users' persistent, slowly drifting interests: std of the term "
        "<user interest(t), ad interest embedding> in the true CTR logit (0.3x of it in the CVR logit), "
        "so that a user's recent clicks predict what they click next; 0 removes it, in [0, 10] "
        f"(default {INTEREST_SCALE})",
    )
    parser.add_argument(
        "--launch-scenes",
        type=int,
        default=0,
        help="cold start: this many scenes (media x slot placements) have no traffic before --launch-day and "
        "then that of an established scene; their CTR/CVR is their cluster's plus an own deviation (default 0)",
    )
    parser.add_argument(
        "--launch-segments",
        type=int,
        default=0,
        help="cold start: this many cities' users appear only from --launch-day; with it every city gets an own "
        "CTR term (a shared and an own taste over categories), so cities are related but differ (default 0)",
    )
    parser.add_argument(
        "--launch-day",
        type=int,
        default=None,
        help="0-based day of the launches (default: the middle day); datagen.json's settings.launches records "
        "the launched scenes and cities",
    )
    parser.add_argument(
        "--segment-launch-day",
        type=int,
        default=None,
        help="0-based day the late cities' users appear, if not --launch-day",
    )
    parser.add_argument(
        "--media-features",
        action="store_true",
        help="the media party's private user preferences: they add to the true CTR and CVR logits, and its "
        "observed tag affinities are written only to media/users/ (keyed by user_id) for `tfads media-party`",
    )
    parser.add_argument(
        "--media-coverage",
        type=number_in(0.0, 1.0),
        default=MediaPlan.coverage,
        help=f"with --media-features: share of the ad logs' users the media party knows (default {MediaPlan.coverage})",
    )
    parser.add_argument(
        "--media-scale",
        type=number_in(0.0, 10.0),
        default=MediaPlan.ctr_scale,
        help="with --media-features: std of the media term in the true CTR and in the true CVR logit "
        f"(default {MediaPlan.ctr_scale})",
    )
    parser.add_argument("--start-date", default="2026-01-01", help="first day, YYYY-MM-DD (default 2026-01-01)")
    parser.add_argument(
        "--schema", default=str(DEFAULT_SCHEMA), help="feature/schema YAML (default configs/schema.yaml)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the logs and print a short summary; 2 on a bad argument or schema."""
    from tfads.datagen import generate
    from tfads.datagen.launches import LaunchPlan

    schema = load_schema(args.schema)
    try:
        launch_day = args.days // 2 if args.launch_day is None else args.launch_day
        launch_plan = LaunchPlan(scenes=args.launch_scenes, segments=args.launch_segments, launch_day=launch_day,
                                 segment_launch_day=args.segment_launch_day)
        media_plan = MediaPlan(enabled=args.media_features, ctr_scale=args.media_scale, cvr_scale=args.media_scale,
                               coverage=args.media_coverage)
        info = generate(
            args.out,
            days=args.days,
            impressions_per_day=args.impressions_per_day,
            seed=args.seed,
            corrupt_rate=args.corrupt_rate,
            with_feed=args.with_feed,
            start_date=args.start_date,
            schema=schema,
            interest_scale=args.interest_scale,
            launch_plan=launch_plan,
            media_plan=media_plan,
            progress=not args.no_progress,
        )
    except ValueError as e:
        print(f"tfads datagen: error: {e}", file=sys.stderr)
        return 2
    lines = ", ".join(f"{log} {n}" for log, n in info["counts"].items())
    bad = ", ".join(f"{reason} {n}" for reason, n in info["corruptions"].items()) or "none"
    rates = info["true_rates"]
    print(f"wrote {args.out}: {info['days']} days from {info['start_date']} (seed {info['seed']})")
    print(f"  lines: {lines}")
    print(f"  true mean pCTR {rates['mean_p_ctr']:.4f}, post-click pCVR {rates['mean_p_cvr_post_click']:.4f}")
    launched = info["settings"].get("launches")
    if launched:
        print(f"  launched: scenes {', '.join(launched['scenes']) or 'none'} on day {launched['launch_day']}; "
              f"cities {', '.join(launched['segments']) or 'none'} on day {launched['segment_launch_day']}")
    media = info["settings"].get("media")
    if media:
        print(f"  media party's user table (not an ad-side log): {media['table']}")
    print(f"  recorded bad lines (corruptions.jsonl): {bad}")
    dropped = info["dropped_after_last_day"]
    print(f"  events after the last day, not written: clicks {dropped['clicks']}, conversions {dropped['conversions']}")
    return 0
