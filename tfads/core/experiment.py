"""Experiment config: which model to build and how to train it (``configs/<exp>.yaml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tfads.core.configtools import from_dict, read_yaml
from tfads.core.defaults import EXPERIMENT, default_config


@dataclass(frozen=True)
class CrossConfig:
    """DCNv2 cross network: ``layers`` tfrs Cross layers (full rank when ``projection_dim`` is
    null, low rank otherwise) or, with ``num_experts`` > 0, our DCN-Mix layers."""

    layers: int = 3
    projection_dim: int | None = None
    structure: Literal["stacked", "parallel"] = "stacked"
    num_experts: int = 0
    expert_rank: int = 32

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"cross.layers must be >= 1, got {self.layers}")


@dataclass(frozen=True)
class AdaSparseConfig:
    """AdaSparse domain-aware pruners on the deep layers (docs/methods/models.md "AdaSparse")."""

    enabled: bool = True
    form: Literal["fusion", "binarization", "scaling"] = "fusion"
    r_min: float = 0.15
    r_max: float = 0.25
    eps: float = 0.25
    beta: float = 2.0
    alpha_start: float = 0.1
    alpha_end: float = 5.0
    alpha_anneal_epochs: float = 0.5  # alpha reaches alpha_end after this many epochs' steps (not of the cap)
    lambda_start: float = 0.01
    lambda_growth: float = 2.0
    lambda_growth_epochs: float = 0.5  # lambda multiplies by lambda_growth every this many epochs' steps
    on_embedding: bool = False
    pruner_hidden_units: int = 0  # > 0: the pruner is a shallow MLP with this hidden width (paper's form)
    pruner_input: Literal["domain_hidden", "domain"] = "domain_hidden"  # what the pruner reads: [e_d; h] or e_d

    def __post_init__(self) -> None:
        if self.pruner_hidden_units < 0:
            raise ValueError(f"pruner_hidden_units must be >= 0, got {self.pruner_hidden_units}")
        if not self.alpha_anneal_epochs > 0.0:
            raise ValueError(f"alpha_anneal_epochs must be > 0, got {self.alpha_anneal_epochs}")
        if not self.lambda_growth_epochs > 0.0:
            raise ValueError(f"lambda_growth_epochs must be > 0, got {self.lambda_growth_epochs}")
        if not 0.0 <= self.r_min <= self.r_max < 1.0:
            raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={self.r_min}, r_max={self.r_max}")


@dataclass(frozen=True)
class HistoryConfig:
    """How the model reads the data's user behaviour histories (the schema's ``history``; ignored without):
    ``din`` (the candidate attends to the history through DIN's activation unit, an MLP of ``din_units``
    with ``din_activation``), ``mean`` / ``sum`` / ``max`` pooling over the real positions, or ``none``."""

    pooling: Literal["din", "mean", "sum", "max", "none"] = "din"
    din_units: list[int] = field(default_factory=lambda: [64, 32])
    din_activation: Literal["prelu", "dice", "sigmoid"] = "prelu"


@dataclass(frozen=True)
class MoEConfig:
    """The ``mmoe`` and ``ple`` backbones (docs/methods/models.md "MMoE and PLE").

    ``use``: ``tasks`` gives each ESMM tower (CTR, CVR; CTR alone for click-only data) its own gate (PLE:
    its own experts too) and the tower reads its group's output; ``scenes`` makes one output for every
    tower whose gates know the row's scene: through the domain embedding (``gate_input: domain`` or
    ``features_domain``), or with ``gate_input: features`` through per-scene gate weights (one weight set
    per value of the primary domain feature, a row using its own scene's).
    ``num_experts``: MMoE's shared experts. ``specific_experts`` / ``shared_experts`` / ``levels``: PLE's
    experts per group, shared experts and CGC levels. ``expert_units``: every expert's ReLU MLP widths.
    ``gate_input``: what a gate reads: ``features`` (x0; in PLE a level's own input), ``domain`` (the
    domain embedding) or ``features_domain`` (both concatenated).
    """

    use: Literal["tasks", "scenes"] = "tasks"
    num_experts: int = 4
    specific_experts: int = 1
    shared_experts: int = 2
    levels: int = 2
    expert_units: list[int] = field(default_factory=lambda: [128, 64])
    gate_input: Literal["features", "domain", "features_domain"] = "features"

    def __post_init__(self) -> None:
        for name in ("num_experts", "levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.specific_experts < 0 or self.shared_experts < 0 or self.specific_experts + self.shared_experts < 1:
            raise ValueError(
                "need specific_experts >= 0, shared_experts >= 0 and at least one expert, got "
                f"specific_experts={self.specific_experts}, shared_experts={self.shared_experts}"
            )
        if not self.expert_units or min(self.expert_units) < 1:
            raise ValueError(f"expert_units must be a non-empty list of positive ints, got {self.expert_units}")


@dataclass(frozen=True)
class HeriConfig:
    """AutoHERI (docs/methods/conversion.md): the CVR tower reads the CTR tower's hidden layers through edges.

    Only with a conversion label (ESMM; click-only data builds the plain CTR tower and logs it). Both towers
    have the widths ``tower_units``; every CTR layer i may feed every CVR layer j (L x L candidate edges, so
    at least 2 layers make the structure worth searching). ``mode``: ``search`` gives every edge a sigmoid
    gate, updated only by architecture steps (Adam at ``arch_learning_rate`` on batches of the valid split,
    one after each weight step) on the ESMM loss plus ``entropy_weight`` x the gates' mean binary entropy;
    ``fixed`` builds only ``edges`` (``[i, j]`` pairs, 0-based), ungated. ``tfads autoheri`` runs the search,
    keeps the edges whose gate is above ``threshold`` and retrains with them fixed.
    """

    enabled: bool = False
    mode: Literal["search", "fixed"] = "search"
    edges: list[list[int]] = field(default_factory=list)
    entropy_weight: float = 0.1
    arch_learning_rate: float = 3e-3
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("search", "fixed"):
            raise ValueError(f"heri.mode must be search or fixed, got {self.mode!r}")
        pairs = [tuple(e) for e in self.edges]
        if any(len(p) != 2 or min(p) < 0 for p in pairs) or len(set(pairs)) != len(pairs):
            raise ValueError(f"heri.edges must be distinct [i, j] pairs of layer indices >= 0, got {self.edges}")
        if self.mode == "search" and pairs:
            raise ValueError(f"heri.edges is for mode fixed (a search has every edge), got {self.edges} with search")
        if self.entropy_weight < 0:
            raise ValueError(f"heri.entropy_weight must be >= 0, got {self.entropy_weight}")
        if not self.arch_learning_rate > 0:
            raise ValueError(f"heri.arch_learning_rate must be > 0, got {self.arch_learning_rate}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"heri.threshold must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: embeddings, backbone, AdaSparse and ESMM heads.

    ``backbone``: ``dnn``, ``dcnv2``, ``star``, ``shared_bottom``, or the mixtures of experts ``mmoe`` and
    ``ple`` (configured by ``moe``). ``heri``: AutoHERI edges from the CTR tower into the CVR tower (any
    backbone; the towers' widths are ``tower_units``).

    ``numeric_encoding``: ``embedding`` (standardised value times a learned ``embedding_dim`` vector)
    or ``dense`` (the standardised value itself, one column of x0, as DeepCTR's dense features).
    ``fused_embeddings``: one embedding table for all categorical/hashed features (one gather and
    one sparse update per step instead of one per feature).
    ``embedding_init_std``: embedding tables start normal with this std (DeepCTR-like small init);
    null keeps Keras' uniform +-0.05.
    ``matmul_dtype``: ``bfloat16`` runs the tfrs cross and deep (MLP / AdaSparse) matmuls in bfloat16
    (float32 variables, embeddings, residual sums and heads; about half the matmul CPU on AVX512-BF16;
    DCN-Mix, STAR, MMoE and PLE stay float32), ``float32`` is exact, ``auto`` picks bfloat16 where the CPU has
    native bfloat16 matmuls (AVX512-BF16 / AMX) and float32 elsewhere. Exports always use float32.
    """

    backbone: Literal["dnn", "dcnv2", "star", "shared_bottom", "mmoe", "ple"] = "dcnv2"
    embedding_dim: int = 16
    deep_units: list[int] = field(default_factory=lambda: [256, 128])
    tower_units: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0
    cross: CrossConfig = field(default_factory=CrossConfig)
    adasparse: AdaSparseConfig = field(default_factory=AdaSparseConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    heri: HeriConfig = field(default_factory=HeriConfig)
    direct_cvr_loss: bool = False
    cvr_loss_weight: float = 1.0
    numeric_encoding: Literal["embedding", "dense"] = "embedding"
    fused_embeddings: bool = False
    embedding_init_std: float | None = None
    matmul_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.embedding_init_std is not None and self.embedding_init_std <= 0:
            raise ValueError(f"embedding_init_std must be > 0 (or null), got {self.embedding_init_std}")
        layers = len(self.tower_units)
        if self.heri.enabled and (not layers or any(max(e) >= layers for e in self.heri.edges)):
            raise ValueError(
                f"heri.edges must index the {layers} tower layers (tower_units {self.tower_units}), "
                f"got {self.heri.edges}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and input pipeline settings."""

    batch_size: int = 1024
    epochs: int = 3
    learning_rate: float = 1e-3
    optimizer: Literal["lazy_adam", "adam", "adagrad"] = "lazy_adam"
    shuffle_buffer: int = 50_000
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    validations_per_epoch: int = 1  # validate (and checkpoint, and maybe stop) this many times per epoch
    early_stopping_patience: int = 2  # validations without a better val pCTR AUC before stopping
    seed: int = 0
    use_sample_weight: bool = True
    scenarios: list[str] | None = None
    steps_per_execution: int = 1
    shuffle_block: int = 1  # shuffle blocks of this many consecutive records (tfads.data.make_dataset)
    deterministic: bool = False  # op determinism and a fixed tf.data order: the same seed gives the same model
    # with parameter servers (TF_CONFIG with a ps job): a variable splits along its rows into shards of at least
    # this many bytes, at most one per ps; smaller ones live whole on one ps (tfads.cluster)
    ps_shard_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if self.steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {self.steps_per_execution}")
        if self.shuffle_block < 1:
            raise ValueError(f"shuffle_block must be >= 1, got {self.shuffle_block}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.validations_per_epoch < 1:
            raise ValueError(f"validations_per_epoch must be >= 1, got {self.validations_per_epoch}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.ps_shard_bytes < 1:
            raise ValueError(f"ps_shard_bytes must be >= 1, got {self.ps_shard_bytes}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Root of an experiment YAML: the schema file, the model and the training settings."""

    schema: str = "schema.yaml"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (YAML-ready); ``load_experiment`` of it gives the same config."""
        return dataclasses.asdict(self)


DEFAULT_EXPERIMENT = default_config(EXPERIMENT)


def load_experiment(path: str | Path = DEFAULT_EXPERIMENT) -> ExperimentConfig:
    """Load an experiment YAML; the ``schema`` path is resolved relative to the YAML's folder."""
    path = Path(path)
    config = from_dict(ExperimentConfig, read_yaml(path), where=str(path))
    schema_path = (path.parent / config.schema).resolve()
    return dataclasses.replace(config, schema=str(schema_path))


def experiment_from_dict(data: dict[str, Any], where: str = "<dict>") -> ExperimentConfig:
    """Build an experiment config from a mapping (used by the tuner and by saved model cards)."""
    return from_dict(ExperimentConfig, data, where=where)
