"""AlphaEdit's hyperparameters: MEMIT's fields plus the null-space threshold and the L2 term."""
from __future__ import annotations

from dataclasses import dataclass

from memit.hparams import MEMITHyperParams
from util.hparams import HyperParamsError


@dataclass(kw_only=True)
class AlphaEditHyperParams(MEMITHyperParams):
    nullspace_threshold: float  # eigenvalues of C0 below this span the preserved keys' null space
    L2: float                   # ridge term of the projected solve  # noqa: N815 (the original's name)

    def _check_lambda(self) -> None:
        # lambda is not used: C0 enters through the projector; L2 keeps the solve well-posed.
        if not self.mom2_adjustment:
            raise HyperParamsError("AlphaEdit needs 'mom2_adjustment': true (its projector is built from C0)")
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise HyperParamsError(
                f"AlphaEdit needs 'nullspace_threshold' > 0 and 'L2' > 0, got {self.nullspace_threshold} and {self.L2}"
            )
