"""``tfads ukd``: UKD's click-adaptive teacher, then an ESMM student on true and pseudo-conversion labels."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tfads.cli.arg_types import number_in, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="manifest.json of the Beam data job (needs a conversion label)")
    parser.add_argument("--config", default=None, help="experiment YAML of teacher and student "
                        "(default: configs/default.yaml)")
    parser.add_argument("--out", required=True, help="output dir: teacher/ and student/ (a normal model dir)")
    parser.add_argument("--teacher-epochs", type=positive_int, default=None,
                        help="the teacher's epochs cap (default: train.epochs); it early-stops on its validation "
                        "pCVR AUC")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="override train.epochs: the student's cap (and the teacher's without --teacher-epochs)")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None, help="override train.steps_per_epoch")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    parser.add_argument("--adversarial-scale", type=number_in(0, 10), default=0.1,
                        help="gradient reversal factor of the teacher's click discriminator (default 0.1)")
    parser.add_argument("--pseudo-weight", type=number_in(1e-6, 1), default=1.0,
                        help="CVR loss weight of a pseudo-labelled row whose teacher heads agree (default 1)")
    parser.add_argument("--uncertainty-scale", type=number_in(0, 100), default=1.0,
                        help="s in the pseudo labels' weight exp(-s * U / U_ref), U the teacher heads' symmetric "
                        "KL and U_ref its mean over unclicked rows (default 1; 0: no down-weighting)")
    parser.epilog = ("Evaluate, calibrate or export OUT/student as any `tfads train` output. Click-only data "
                     "(no conversion label) is refused.")


def run(args: argparse.Namespace) -> int:
    from tfads.core.experiment import DEFAULT_EXPERIMENT, load_experiment
    from tfads.jobs.ukd import run_ukd
    from tfads.train import summary_line
    from tfads.ukd import UkdConfig

    config = load_experiment(args.config or DEFAULT_EXPERIMENT)
    overrides = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "seed": args.seed}
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, **{k: v for k, v in overrides.items() if v is not None}))
    try:
        ukd = UkdConfig(teacher_epochs=args.teacher_epochs, adversarial_scale=args.adversarial_scale,
                        pseudo_weight=args.pseudo_weight, uncertainty_scale=args.uncertainty_scale)
        result = run_ukd(config, args.data, args.out, ukd)
    except ValueError as e:  # click-only data, a bad setting
        print(f"tfads ukd: error: {e}", file=sys.stderr)
        return 2
    print(f"student: {summary_line(result.student.history)}")
    print(f"teacher written to {result.teacher_dir}; student model dir {result.student_dir}")
    return 0
