"""adversarial — erase the embeddings an attacker would use to bring the concept back.

RECE (Gong et al., ECCV 2024, arXiv 2407.12383; research/methods.md §3, §10 items 11–13): after an
edit ``W'_l = W0_l T``, the embedding ``c' = (λI + TᵀGT)⁻¹ TᵀG c`` (``G = Σ_l W0_lᵀ W0_l``, the
space's ``site_gram``) makes the *edited* model reproduce the base model's K/V outputs for the
concept row ``c`` — a closed-form "soft prompt" attack. Each round solves the program as it
stands, computes ``c'`` for every erase row present when the pass started, and adds
``(c' → the row's guide)`` as new erase rows with the row's weight × ``weight``.

This is the ``rece-joint`` preset's pass, erasec's variant and not the published method (that is
``passes/rece.py``, preset ``rece``): RECE edits the *current* weights round after round; here every
round re-solves the *joint* system from W0 with all rows so far (attacks on the rows present when
the pass started, paired with their own guides), so the result does not depend on an epoch order.
The final ``solve`` in the pipeline produces the solution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import EditProgram, EraseRows, Provenance
from erasec.ir.linalg import regeneration_embeddings

from .base import EditPass
from .errors import PassError
from .solve import SolvePass


@dataclass(frozen=True, slots=True)
class AdversarialPass(EditPass):
    name: ClassVar[str] = "adversarial"

    rounds: int = 1
    lambda_: float = 0.1
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.check_range("rounds", self.rounds, 0, 20)
        self.check_range("lambda", self.lambda_, 0.0, 1e6, low_open=True)
        self.check_range("weight", self.weight, 0.0, 1e6, low_open=True)

    def reads_erase_rows(self) -> bool:
        return self.rounds > 0

    def apply(self, program: EditProgram) -> EditProgram:
        if self.rounds == 0:
            return program
        self.check_unfolded(program)
        for space in program.spaces:
            if space.site_gram is None:
                raise PassError(f"key space {space.space}: no site Gram in the program; the model frontend must provide it")
            if not space.erase.shared or space.separable:
                raise PassError(f"key space {space.space}: needs one shared map (guide targets, not separable)")
        sources = {space.space: space.erase for space in program.spaces}
        current = program
        for round_index in range(1, self.rounds + 1):
            solved = SolvePass().apply(current).solution
            spaces = []
            for space in current.spaces:
                source = sources[space.space]
                solution = solved.space(space.space)
                shared = np.eye(source.keys.shape[1]) + solution.left @ solution.right.T
                attack = regeneration_embeddings(shared, space.site_gram, source.keys, self.lambda_)
                added = EraseRows(
                    keys=attack,
                    guides=source.guides,
                    weights=source.weights * self.weight,
                    provenance=tuple(
                        Provenance(request=p.request, prompt=f"{p.prompt} <attack {round_index}>", token=p.token)
                        for p in source.provenance
                    ),
                )
                erase = EraseRows(
                    keys=np.concatenate([space.erase.keys, added.keys]),
                    guides=np.concatenate([space.erase.guides, added.guides]),
                    weights=np.concatenate([space.erase.weights, added.weights]),
                    provenance=space.erase.provenance + added.provenance,
                )
                spaces.append(replace(space, erase=erase))
            current = replace(current, spaces=tuple(spaces))
        return current
