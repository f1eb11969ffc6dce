"""CTR/CVR models: feature layer -> backbone (DNN | DCNv2 | STAR | shared-bottom) -> ESMM heads."""

from tfads.models.esmm import build_model, compile_model

__all__ = ["build_model", "compile_model"]
