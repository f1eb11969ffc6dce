"""Custom Keras layers of tfads: AdaSparse pruning, DCN-Mix and bfloat16-matmul crosses, STAR multi-domain layers,
MMoE and PLE mixtures of experts, AutoHERI's gated CTR -> CVR towers, DIN sequence layers over behaviour histories
and derived features computed from raw fields."""

from tfads.layers.adasparse import AdaSparseMLP, AdaSparsePruner, SparsityReport, find_pruners, sparsity_report
from tfads.layers.callbacks import AlphaAnnealer, InRangeEarlyStopping, SparsityLambdaScheduler
from tfads.layers.dcn_mix import CrossMix
from tfads.layers.derived import JoinFields, add_derived, derived_layers, join_fields
from tfads.layers.gradient_reversal import GradientReversal
from tfads.layers.heri import HeriTowers
from tfads.layers.low_precision_cross import LowPrecisionCross, matmul_policy
from tfads.layers.moe import CGC, PLE, ExpertBank, MMoE, SoftmaxGate
from tfads.layers.sequence import BroadcastRows, Dice, DinAttention, MaskedPooling
from tfads.layers.star import PartitionedNormalization, StarDense, StarTower

__all__ = [
    "AdaSparseMLP",
    "AdaSparsePruner",
    "AlphaAnnealer",
    "InRangeEarlyStopping",
    "BroadcastRows",
    "CGC",
    "CrossMix",
    "Dice",
    "DinAttention",
    "ExpertBank",
    "HeriTowers",
    "GradientReversal",
    "JoinFields",
    "MaskedPooling",
    "MMoE",
    "PLE",
    "PartitionedNormalization",
    "SparsityLambdaScheduler",
    "SoftmaxGate",
    "SparsityReport",
    "StarDense",
    "StarTower",
    "LowPrecisionCross",
    "add_derived",
    "derived_layers",
    "find_pruners",
    "join_fields",
    "matmul_policy",
    "sparsity_report",
]
