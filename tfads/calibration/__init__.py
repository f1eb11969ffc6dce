"""Calibration: posterior statistics, the AdaCalib layer, its fitting, and baseline calibrators."""

from tfads.calibration.adacalib import AdaCalib
from tfads.calibration.baselines import (
    Calibrator,
    HistogramBinning,
    IsotonicCalibrator,
    NeuCalib,
    PerFieldIsotonic,
    PlattScaling,
    TemperatureScaling,
)
from tfads.calibration.fit import fit_adacalib
from tfads.calibration.stats import BinTable, CalibStats, ValueStats, compute_calibration_stats

__all__ = [
    "AdaCalib",
    "BinTable",
    "CalibStats",
    "Calibrator",
    "HistogramBinning",
    "IsotonicCalibrator",
    "NeuCalib",
    "PerFieldIsotonic",
    "PlattScaling",
    "TemperatureScaling",
    "ValueStats",
    "compute_calibration_stats",
    "fit_adacalib",
]
