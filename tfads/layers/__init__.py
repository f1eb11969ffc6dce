"""Custom Keras layers of tfads: AdaSparse pruning, DCN-Mix crosses and STAR multi-domain layers."""

from tfads.layers.adasparse import AdaSparseMLP, AdaSparsePruner, SparsityReport, find_pruners, sparsity_report
from tfads.layers.callbacks import AlphaAnnealer, SparsityLambdaScheduler
from tfads.layers.dcn_mix import CrossMix
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
    "find_pruners",
    "sparsity_report",
]
