"""AlphaEdit's hyperparameters: MEMIT's fields plus the null-space threshold and the L2 term."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memit.hparams import MEMITHyperParams
from util.hparams import HyperParamsError

PROJECTION_DTYPES = ("float32", "float64")


@dataclass(kw_only=True)
class AlphaEditHyperParams(MEMITHyperParams):
    nullspace_threshold: float  # eigenvalues of C0 below this span the preserved keys' null space
    L2: float                   # ridge term of the projected solve  # noqa: N815 (the original's name)
    # "float32" (the original): P from an SVD of float32 C0, the projected solve in float32. "float64":
    # P from C0's float64 eigen-decomposition and the solve in float64 (this harness's runs before; eigenvalues
    # near the threshold are classified more reliably).
    projection_dtype: str = "float32"

    VALUES_BEFORE: ClassVar[dict[str, Any]] = {**MEMITHyperParams.VALUES_BEFORE, "projection_dtype": "float64"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection_dtype not in PROJECTION_DTYPES:
            raise HyperParamsError(f"'projection_dtype' must be one of {PROJECTION_DTYPES}, "
                                   f"got {self.projection_dtype!r}")

    def _check_lambda(self) -> None:
        # lambda is not used: C0 enters through the projector; L2 keeps the solve well-posed.
        if not self.mom2_adjustment:
            raise HyperParamsError("AlphaEdit needs 'mom2_adjustment': true (its projector is built from C0)")
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise HyperParamsError(
                f"AlphaEdit needs 'nullspace_threshold' > 0 and 'L2' > 0, got {self.nullspace_threshold} and {self.L2}"
            )
