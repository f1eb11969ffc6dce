"""Hyperparameter sweeps with keras-tuner: YAML search space, tuner, reports (``tfads tune``).

``tfads.tune.config`` and ``tfads.tune.space`` load without TensorFlow; the tuner and the reports
import it.
"""
