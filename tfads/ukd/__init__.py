"""UKD (Xu et al., WWW 2022): a click-adaptive teacher's pseudo-conversion labels for unclicked impressions,
weighted by its uncertainty, train an ordinary ESMM student over the entire space (docs/methods/conversion.md "UKD")."""

from tfads.ukd.config import UkdConfig
from tfads.ukd.pseudo import pseudo_label_targets, reference_uncertainty, symmetric_kl, uncertainty_weight
from tfads.ukd.teacher import (
    build_teacher,
    compile_teacher,
    load_teacher,
    require_conversion,
    save_teacher,
    teacher_heads,
    teacher_targets,
    train_teacher,
)

__all__ = [
    "UkdConfig",
    "build_teacher",
    "compile_teacher",
    "load_teacher",
    "pseudo_label_targets",
    "reference_uncertainty",
    "require_conversion",
    "save_teacher",
    "symmetric_kl",
    "teacher_heads",
    "teacher_targets",
    "train_teacher",
    "uncertainty_weight",
]
