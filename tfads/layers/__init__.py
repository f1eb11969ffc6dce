"""Custom Keras layers of tfads: AdaSparse pruning, DCN-Mix and bfloat16-matmul crosses and STAR multi-domain layers."""

from tfads.layers.adasparse import AdaSparseMLP, AdaSparsePruner, SparsityReport, find_pruners, sparsity_report
from tfads.layers.callbacks import AlphaAnnealer, SparsityLambdaScheduler
from tfads.layers.dcn_mix import CrossMix
from tfads.layers.low_precision_cross import LowPrecisionCross, matmul_policy
from tfads.layers.star import PartitionedNormalization, StarDense, StarTower

__all__ = [
    "AdaSparseMLP",
    "AdaSparsePruner",
    "AlphaAnnealer",
    "CrossMix",
    "PartitionedNormalization",
    "SparsityLambdaScheduler",
    "SparsityReport",
    "StarDense",
    "StarTower",
    "LowPrecisionCross",
    "find_pruners",
    "matmul_policy",
    "sparsity_report",
]
