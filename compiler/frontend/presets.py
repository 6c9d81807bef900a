"""Methods: named presets of a pass pipeline plus the lowering defaults of the published method.

A spec's ``method:`` names one; the lowering reads its row rule, guides and prior, and the build its
pipeline string. No pass reads a preset, so the table lives in the frontend, not in ``passes/``.
Reference defaults are from research/methods.md §1.2, §1.3 and §10 (items 1–9). ``erasec methods``
prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

RowRule = Literal["last_token", "legacy_span", "time_aligned", "eot_pad"]
ROW_RULES: tuple[str, ...] = get_args(RowRule)  # lowering/lower.py's docstring says what each selects


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    summary: str
    pipeline: str
    rows: RowRule  # which embedding rows become keys (the model frontend selects them)
    lam: float
    erase_scale: float
    preserve_scale: float | Literal["legacy"]  # "legacy": max(0.1, 1 / number of retain prompts)
    preserve_empty: bool  # the empty prompt is always preserved (all its rows)
    blank_guide: str  # the prompt an empty anchor ("") stands for
    reference: str
    roles: tuple[str, ...] = ("k", "v")  # which of each attention's to_k / to_v the edit applies to
    erase_weighting: Literal["sum", "mean"] = "sum"  # "mean": each erase prompt weighs 1/#prompts
    # a shipped list of everyday prompts whose rows are preserved too (MACE's and OCE's COCO prior),
    # with total weight prior_scale spread evenly over their rows
    prior: str | None = None
    prior_scale: float = 0.0
    # RECE: also lower each erase prompt's 77 padded rows with its guide's, and the rounds' retain rows
    attack_rows: bool = False
    # the rows of an implicit entry's trigger prompts (docs/spec.md, "Implicit concepts"): TRCE's stage 1
    # maps their end-of-text rows onto a safe prompt's (Chen et al., ICCV 2025, arXiv 2503.07389)
    implicit_rows: RowRule = "eot_pad"
    # neighbours mined from the vocabulary and preserved per erased concept (compiler/lowering/neighbors.py;
    # 0 = off unless the spec sets options.neighbors)
    neighbors: int = 0
    # which rows of each prior prompt are preserved: "tokens" (every token row after BOS) or "padded" (every
    # row after BOS, padding included: a contextual encoder's padding rows carry the prompt, issue 15)
    prior_rows: Literal["tokens", "padded"] = "tokens"
    # the neighbour rows a method that mines by default preserves (compiler/frontend/neighbors.py, NEIGHBOR_ROWS)
    neighbor_rows: str = "last"


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="uce",
            summary="UCE (2025 reference rewrite): one row per prompt at the last subject token",
            pipeline="canonicalize,solve",
            rows="last_token",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale=1.0,
            preserve_empty=False,
            blank_guide="",
            reference="Gandikota et al., WACV 2024, arXiv 2308.14761; trainscripts/uce_sd_erase.py @28c81ed",
        ),
        Preset(
            name="uce-legacy",
            summary="UCE (original script): rows from the last subject token to the end, padding included; "
            "empty prompt preserved with all 77 rows",
            pipeline="canonicalize,solve",
            rows="legacy_span",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale="legacy",
            preserve_empty=True,
            blank_guide=" ",
            reference="Gandikota et al., WACV 2024, arXiv 2308.14761; train-scripts/train_erase.py @35e91e2",
        ),
        Preset(
            name="time",
            summary="TIME: all 77 rows of each prompt, token-aligned to the anchor's rows; ridge only",
            pipeline="canonicalize,solve",
            rows="time_aligned",
            lam=0.1,
            erase_scale=1.0,
            preserve_scale=1.0,
            preserve_empty=False,
            blank_guide="",
            reference="Orgad, Kawar, Belinkov, ICCV 2023, arXiv 2303.08084; train_funcs.py, apply_time.py @1d6784a",
        ),
        Preset(
            name="rece",
            summary="RECE as its code runs: UCE (original script's rows and settings), then rounds that each "
            "re-erase the closed-form attack on the current weights; recipe nudity (3 rounds, attack λ 0.1)",
            pipeline="canonicalize,rece{recipe=nudity}",
            rows="legacy_span",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale="legacy",
            preserve_empty=True,
            blank_guide=" ",
            reference="Gong et al., ECCV 2024, arXiv 2407.12383; train.py, erase_methods/uce.py, "
            "utils/embedding_calculation/close_form_emb.py @403a67f",
            attack_rows=True,
        ),
        Preset(
            name="rece-joint",
            summary="erasec's joint variant of RECE (not the published method): legacy rows and 2 rounds of "
            "closed-form attacks (from W0's map, last-token rows on), all solved together once from W0",
            pipeline="canonicalize,adversarial{rounds=2 lambda=0.1},solve",
            rows="legacy_span",
            lam=0.1,
            erase_scale=1.0,
            preserve_scale=0.1,
            preserve_empty=True,
            blank_guide=" ",
            reference="this project, after Gong et al., ECCV 2024, arXiv 2407.12383 (docs/compiler.md lists the differences)",
        ),
        Preset(
            name="speed",
            summary="SPEED as published: last-token rows, mean targets, to_v only; per layer, the retain rows the "
            "edit moves most (IPF) and their directed perturbations (DPA) held exactly with BOS/empty-prompt "
            "invariants (null-space projection)",
            pipeline="canonicalize,filter-preserve,invariants{centroids=3},influence-filter,"
            "directed-augment{count=10 seed=0},orthogonalize{mode=hard tau=0.1 soft=false},solve",
            rows="last_token",
            lam=1.0,
            erase_scale=1.0,
            preserve_scale=1.0,
            preserve_empty=False,
            blank_guide="",
            reference="Li et al., 2025, arXiv 2503.07392; train_erase_null.py @6d3df0c",
            roles=("v",),
            erase_weighting="mean",
        ),
        Preset(
            name="erasec",
            summary="erasec's default: last-token rows and their mined neighbours, an everyday-text preserve "
            "prior (every row, padding included), BOS and empty-prompt rows held exactly, conflicts reported",
            pipeline="canonicalize,filter-preserve,check-conflicts,invariants{centroids=3},"
            "mine-neighbors{count=4 radius=0.2},solve",
            rows="last_token",
            lam=0.5,
            erase_scale=1.0,
            preserve_scale=1.0,
            preserve_empty=False,
            blank_guide="",
            reference="this project (docs/results.md): UCE rows (arXiv 2308.14761), RealEra's neighbours "
            "(arXiv 2410.09140), a COCO preserve prior (MACE, arXiv 2403.06135), SPEED's invariants (arXiv 2503.07392)",
            prior="coco",
            prior_scale=1000.0,
            # the prior's padding rows too: on the held-out benchmark U/N 1.18 → 1.25 and F 0.167 → 0.123 at
            # N = 10, efficacy 0.885 → 0.949 (tuning split; docs/results.md, "Selective erasure, held out")
            prior_rows="padded",
        ),
    )
}
