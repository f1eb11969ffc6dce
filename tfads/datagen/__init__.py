"""Synthetic ad logs with known ground truth: ``generate`` (and the ``tfads datagen`` command)."""

from tfads.datagen.generator import generate

__all__ = ["generate"]
