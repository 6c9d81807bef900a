"""rece — RECE as its code runs: a UCE edit, then rounds of closed-form attacks re-erased from the
current weights.

Gong et al., ECCV 2024, arXiv 2407.12383; research/methods.md §3.1, §3.2, §10 items 11–13; the
code followed is CharlesGong12/RECE @403a67f: ``train.py`` (the epoch loop),
``utils/embedding_calculation/close_form_emb.py::close_form_emb_regzero`` (the attack) and
``erase_methods/uce.py::edit_model_adversarial`` (each round's edit).

1. **UCE stage** (the reference's ``--target_ckpt``, made by UCE's original script): the program's
   own erase rows, preserve rows and λ as lowered (``uce-legacy``'s rows and settings), solved from
   W0: ``W_1 = W0 T_0``.
2. **Round e** (``rounds`` times): for every row c of each erase prompt's 77 padded rows
   (``attack_sources``; the reference's slice to the last token is commented out), the embedding
   ``c' = (λa I + Σ_l W_eᵀ W_e)⁻¹ Σ_l W_eᵀ W0_l c = (λa I + TᵀGT)⁻¹ TᵀG c`` (``T`` the current
   shared map, ``G = Σ_l W0_lᵀ W0_l``, ``λa = attack-lambda``); then one edit of the *current*
   weights with c' row r → the guide's row r (position-aligned, values ``W_e g``), the retain rows
   (``attack_retain``) at ``preserve-scale`` and ridge ``lambda``:
   ``W_{e+1} = (λ W_e + Σ W_e g c'ᵀ + ps Σ W_e p pᵀ)(λI + Σ c'c'ᵀ + ps Σ p pᵀ)⁻¹ = W_e T_e``.

Every stage is ``W ← W T``, so the result is ``W0 T_0 T_1 ⋯ T_E``: one shared map, and the patch a
LoRA ``ΔW_l = W0_l (T − I)`` with ``T − I`` kept factored:
``T_a T_b − I = (T_a − I) + T_a (T_b − I)`` stacks the factors ``[L_a, T_a L_b][R_a, R_b]ᵀ``.

Recipes (the reference's README "Notes" and scripts): ``nudity`` 3 rounds at λa 0.1 with
``' '`` retained once per erase prompt (``train.py``: ``retain_texts = [' '] × #concepts``);
``unsafe`` 2 rounds, otherwise the same; ``artist`` 1 round at λa 1e-3 retaining ``''`` and the
spec's preserve list (``train_artists.py``: ``[''] + every other artist``); ``object`` 1 round at
λa 1e-3 retaining ``''`` and the preserve list (``train_object.py``). ``rounds``,
``attack-lambda`` and ``retain`` override a recipe's value. The reference keeps, among the
epochs, the checkpoint its image classifier scores best; a compiler cannot, so the last round is
the result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

from erasec.ir import EditProgram, EraseRows, PreserveRows, Provenance, Solution, SolveReport, SpaceSolution, empty_hard
from erasec.ir.linalg import orthonormal_right, regeneration_embeddings

from .base import EditPass
from .errors import PassError
from .solve import SolvePass

# recipe -> (rounds, attack lambda, retain set)
RECIPES: dict[str, tuple[int, float, str]] = {
    "nudity": (3, 0.1, "blank"),
    "unsafe": (2, 0.1, "blank"),
    "artist": (1, 1e-3, "spec"),
    "object": (1, 1e-3, "spec"),
}


def _scaled(rows: PreserveRows, scale: float) -> PreserveRows:
    """``rows`` with every weight (and the folded moments' weights) multiplied by ``scale``."""
    folded = rows.folded
    if folded is not None:
        folded = replace(folded, gram=folded.gram * scale, weight=folded.weight * scale)
    return PreserveRows(keys=rows.keys, weights=rows.weights * scale, provenance=rows.provenance, folded=folded)


@dataclass(frozen=True, slots=True)
class RecePass(EditPass):
    name: ClassVar[str] = "rece"

    recipe: Literal["nudity", "unsafe", "artist", "object"] = "nudity"
    rounds: int = -1  # -1: the recipe's
    attack_lambda: float = -1.0  # λa of the attack; -1: the recipe's
    lambda_: float = 0.1  # ridge of each round's edit (train.py --lamb)
    preserve_scale: float = 0.1  # weight of each retain row in a round (train.py --preserve_scale)
    retain: Literal["recipe", "blank", "spec"] = "recipe"
    max_condition: float = 1e12

    def __post_init__(self) -> None:
        rounds, attack, retain = RECIPES[self.recipe]
        if self.rounds == -1:
            object.__setattr__(self, "rounds", rounds)
        if self.attack_lambda == -1.0:
            object.__setattr__(self, "attack_lambda", attack)
        if self.retain == "recipe":
            object.__setattr__(self, "retain", retain)
        self.check_range("rounds", self.rounds, 0, 20)
        self.check_range("attack-lambda", self.attack_lambda, 0.0, 1e6, low_open=True)
        self.check_range("lambda", self.lambda_, 0.0, 1e6, low_open=True)
        self.check_range("preserve-scale", self.preserve_scale, 0.0, 1e6, low_open=True)
        self.check_range("max-condition", self.max_condition, 1.0, 1e15)

    def _check(self, program: EditProgram) -> None:
        for space in program.spaces:
            where = f"key space {space.space}"
            if space.attack_sources is None or space.attack_retain is None:
                raise PassError(f"{where}: no attack rows; RECE's rounds need method rece's lowering (not options.pooled)")
            if space.site_gram is None:
                raise PassError(f"{where}: no site Gram in the program; the model frontend must provide it")
            if not space.erase.shared or space.separable:
                raise PassError(f"{where}: needs one shared map (guide targets, not separable)")

    def _space(self, program: EditProgram, space) -> SpaceSolution:
        dim = program.target.space(space.space).dim
        solver = SolvePass(max_condition=self.max_condition)
        if space.erase.total == 0:
            raise PassError(f"key space {space.space}: no erase rows; the spec must erase at least one concept")
        first = solver._shared(space, space.erase, space.hard.keys, dim)  # the UCE stage, from W0
        left, right, reports = first.left, first.right, [first.report]
        shared = np.eye(dim) + left @ right.T
        sources = space.attack_sources
        retain = _scaled(space.attack_retain, self.preserve_scale)
        for round_index in range(1, self.rounds + 1):
            attack = regeneration_embeddings(shared, space.site_gram, sources.keys, self.attack_lambda)
            rows = EraseRows(
                keys=attack,
                guides=sources.guides,
                weights=sources.weights,
                provenance=tuple(
                    Provenance(request=p.request, prompt=f"{p.prompt} <attack {round_index}>", token=p.token)
                    for p in sources.provenance
                ),
            )
            stage = replace(space, lam=self.lambda_, erase=rows, preserve=retain, hard=empty_hard(dim))
            step = solver._shared(stage, rows, np.zeros((0, dim)), dim)  # T_e − I, against the current weights
            left = np.concatenate([left, shared @ step.left], axis=1)
            right = np.concatenate([right, step.right], axis=1)
            shared = shared + shared @ step.left @ step.right.T
            reports.append(step.report)
        if right.shape[1] >= dim:
            left, right = shared - np.eye(dim), np.eye(dim)
        else:
            left, right = orthonormal_right(left, right)
        return SpaceSolution(
            space=space.space,
            form="shared",
            rank=right.shape[1],
            left=left,
            right=right,
            roles=space.roles,
            report=SolveReport(
                condition=max(r.condition for r in reports),
                residual=max(r.residual for r in reports),
                hard_rank=first.report.hard_rank,
            ),
        )

    def apply(self, program: EditProgram) -> EditProgram:
        self._check(program)
        solution = Solution(spaces=tuple(self._space(program, space) for space in program.spaces))
        return replace(program, solution=solution)
