"""compress — measure what storing the factors in the output dtype costs (rank caps come later).

IR arrays stay float64; only a backend narrows to the output dtype, once. This pass records
the relative Frobenius error ``‖L Rᵀ − round(L) round(R)ᵀ‖ / ‖L Rᵀ‖`` of that rounding on the
solved factors (for the shared form: the factors of ``T − I``, whose per-site products the
backend forms in float64 before rounding), so the build summary and the patch can state it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

from erasec.ir import DtypeReport, EditProgram, Solution
from erasec.ir.dtypes import round_to

from .base import EditPass
from .errors import PassError


def _rounding_error(up: np.ndarray, down: np.ndarray, dtype: str) -> float:
    exact = up @ down
    norm = np.linalg.norm(exact)
    if norm == 0:
        return 0.0
    return float(np.linalg.norm(exact - round_to(up, dtype) @ round_to(down, dtype)) / norm)


@dataclass(frozen=True, slots=True)
class CompressPass(EditPass):
    name: ClassVar[str] = "compress"

    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    def apply(self, program: EditProgram) -> EditProgram:
        if program.solution is None:
            raise PassError("no solution to compress; put 'solve' before 'compress' in the pipeline")
        spaces = []
        for space in program.solution.spaces:
            if space.form == "shared":
                error = _rounding_error(space.left, space.right.T, self.dtype)
            else:
                error = max((_rounding_error(layer.up, layer.down, self.dtype) for layer in space.layers), default=0.0)
            spaces.append(replace(space, dtype=DtypeReport(dtype=self.dtype, max_rel_error=error)))
        return replace(program, solution=Solution(spaces=tuple(spaces)))
