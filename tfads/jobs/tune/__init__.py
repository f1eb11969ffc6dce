"""Hyperparameter sweeps with keras-tuner: YAML search space, tuner, reports (``tfads tune``).

``tfads.jobs.tune.config`` and ``tfads.jobs.tune.space`` load without TensorFlow; the tuner and the reports
import it.
"""
