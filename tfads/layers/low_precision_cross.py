"""tfrs' DCNv2 ``Cross`` with its projection matmuls in bfloat16 and the rest of the layer in float32."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

import tf_keras as keras
from tensorflow_recommenders.layers.feature_interaction.dcn import Cross

MatmulDtype = Literal["float32", "bfloat16"]
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 matmuls


@cache
def native_matmul_dtype() -> MatmulDtype:
    """``bfloat16`` where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), else ``float32``.

    Without native support bfloat16 matmuls are emulated and slower than float32, so ``auto`` (the
    default ``model.matmul_dtype``) only picks bfloat16 where it pays.
    """
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "float32"
    return "bfloat16" if any(f in flags.split() for f in BF16_CPU_FLAGS) else "float32"


def resolve_matmul_dtype(setting: str) -> MatmulDtype:
    """A config's ``matmul_dtype`` (``auto`` | ``float32`` | ``bfloat16``) as the dtype to build with."""
    return native_matmul_dtype() if setting == "auto" else setting  # type: ignore[return-value]


def matmul_policy(matmul_dtype: MatmulDtype) -> str:
    """The Keras dtype policy for a layer whose matmul runs in ``matmul_dtype`` (variables stay float32)."""
    if matmul_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"matmul_dtype must be 'float32' or 'bfloat16', got {matmul_dtype!r}")
    return "float32" if matmul_dtype == "float32" else "mixed_bfloat16"


@keras.utils.register_keras_serializable(package="tfads")
class LowPrecisionCross(Cross):
    """``tfrs.layers.dcn.Cross`` whose ``W·x`` (full rank) or ``U·V·x`` (low rank) runs in ``matmul_dtype``.

    ``x_{l+1} = x0 * (W x_l + b) + x_l`` as in tfrs; only the projection Dense layers get the
    ``mixed_bfloat16`` policy (float32 variables, bfloat16 matmul, about half the CPU time on
    AVX512-BF16), and their output is cast back, so the residual sum and the layer's output stay
    float32. With ``matmul_dtype="float32"`` it is exactly tfrs' ``Cross``.

    Example:
      >>> x0 = tf.ones((2, 8))
      >>> y = LowPrecisionCross(matmul_dtype="bfloat16")(x0, x0)  # (2, 8), float32
    """

    def __init__(self, matmul_dtype: MatmulDtype = "bfloat16", **kwargs: Any) -> None:
        policy = matmul_policy(matmul_dtype)  # a bad dtype fails before the layer exists
        super().__init__(**kwargs)
        self.matmul_dtype, self._matmul_policy = matmul_dtype, policy

    def build(self, input_shape) -> None:
        super().build(input_shape)
        for name in ("_dense", "_dense_u", "_dense_v"):
            dense = getattr(self, name, None)
            if dense is not None:
                dense._set_dtype_policy(self._matmul_policy)  # before the Dense builds: variables stay float32

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "matmul_dtype": self.matmul_dtype}
