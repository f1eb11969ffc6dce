"""UKD settings: the teacher's adversarial part and how pseudo labels weigh in the student's loss."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UkdConfig:
    """Settings of a UKD run (docs/methods/conversion.md "UKD").

    Attributes:
      teacher_epochs: the teacher's epochs cap (it early-stops on its validation pCVR AUC); None takes the
        experiment's ``train.epochs``.
      adversarial_scale: the gradient reversal's factor: how hard the shared representation is pushed to
        hide click vs non-click from the discriminator (DANN's lambda).
      discriminator_units: the discriminator MLP's hidden layers.
      pseudo_weight: the CVR loss weight of a pseudo-labelled (unclicked) row whose teacher heads agree;
        the uncertainty factor scales it down from there.
      uncertainty_scale: ``s`` in the uncertainty weight ``exp(-s * U / U_ref)``.
      reference_batches: train-split batches over whose unclicked rows ``U_ref`` (the mean uncertainty) is
        measured after the teacher trains.
    """

    teacher_epochs: int | None = None
    adversarial_scale: float = 0.1
    discriminator_units: tuple[int, ...] = (32,)
    pseudo_weight: float = 1.0
    uncertainty_scale: float = 1.0
    reference_batches: int = 20

    def __post_init__(self) -> None:
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise ValueError(f"UkdConfig: teacher_epochs should be >= 1. Got {self.teacher_epochs}")
        if self.adversarial_scale < 0:
            raise ValueError(f"UkdConfig: adversarial_scale should be non-negative. Got {self.adversarial_scale}")
        if not 0 < self.pseudo_weight <= 1:
            raise ValueError(f"UkdConfig: pseudo_weight should be in (0, 1]. Got {self.pseudo_weight}")
        if self.uncertainty_scale < 0:
            raise ValueError(f"UkdConfig: uncertainty_scale should be non-negative. Got {self.uncertainty_scale}")
        if self.reference_batches < 1:
            raise ValueError(f"UkdConfig: reference_batches should be >= 1. Got {self.reference_batches}")
