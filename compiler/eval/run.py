"""``erasec eval PATCH --model M``: what a patch erases, what it keeps, and how hard it is to undo.

Exact on the text pathway (DESIGN.md §9; definitions in docs/evaluation.md): cross-attention reads
a prompt only through ``W_l c``, so every metric compares the edited K/V outputs ``(W0_l + ΔW_l) c``
with the base ones — no sampling, no seeds. ``ΔW_l`` is rebuilt from the patch's own tensors
(``up @ down · alpha/rank``) and ``W0_l`` read from the model; the text encoder of the model encodes
the prompts. A pair (prompt, guide) is compared at each prompt's last content token (the row the
methods edit: research/methods.md §1); specificity uses every token row of a prompt.

Interference needs one patch per concept: each erase entry is re-solved alone with the patch's
recorded pipeline, method and preserve list (the text encodings are computed once and shared), and
entry (i, j) is how far erasing concept i alone moved concept j (``metrics.displacement``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS
from erasec.patches.solution import patch_target
from erasec.patches.read import read_patch

from ..models.protocol import TextModel
from ..models.recording import RecordingModel
from ..errors import EvalError
from .drift_curve import drift_curve
from .metrics import (
    displacement,
    displacement_by_layer,
    efficacy,
    output_change,
    recoverability,
    specificity,
)
from ..lowering.lower import Lowering
from ..lowering.prompts import erase_pairs, ordered_entries
from ..frontend.from_patch import spec_from_dict
from .results import ConceptResult, EvalOptions, EvalResult
from .suites import Request, load_prompt_file, load_suite, sort_prompts

logger = logging.getLogger(__name__)

STAGES = ("open", "encode", "metrics", "interference")
WORST_SHOWN = 5


def _requests(spec, preset) -> list[Request]:
    own: dict[str, list[tuple[str, str]]] = {}
    for request, prompt, guide, _ in erase_pairs(spec, preset):
        own.setdefault(request, []).append((prompt, guide))
    return [
        Request(
            concept=entry.concept,
            names=(entry.concept, *entry.synonyms),
            anchor=entry.anchor if entry.anchor.strip() else preset.blank_guide,
            own=tuple(own[entry.concept]),
        )
        for entry in ordered_entries(spec)
    ]


class _Rows:
    """Encoded prompts compared as the denoiser reads them. SD: a pair at each prompt's last content
    token (the row the methods edit), every token row for specificity. A diffusion transformer
    (``model.sequence_length`` set): every row its runtime feeds at that padding (``seen_rows``: all
    padded rows for FLUX and SD3, where the padding carries the prompt), a prompt's row r paired with
    its guide's row r, as the build lowers them (``lowering/rows.RuntimeRows``)."""

    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.padded = model.sequence_length is not None

    def last(self, prompts) -> np.ndarray:
        prompts = list(prompts)
        ids = self.model.tokenize(prompts)
        rows = self.model.encode(prompts, padded=False)
        return np.stack([r[len(i) - 2] for r, i in zip(rows, ids)])

    def pairs(self, pairs) -> tuple[np.ndarray, np.ndarray]:
        """(prompt rows, guide rows) of (prompt, guide) pairs, row for row."""
        prompts, guides = [p for p, _ in pairs], [g for _, g in pairs]
        if not self.padded:
            return self.last(prompts), self.last(guides)
        keys = self.each(prompts)
        new = self.model.encode(guides, padded=True)
        return np.concatenate(keys), np.concatenate([g[: k.shape[0]] for k, g in zip(keys, new)])

    def all(self, prompts) -> np.ndarray:
        return np.concatenate(self.each(prompts))

    def each(self, prompts) -> list[np.ndarray]:
        prompts = list(prompts)
        if not self.padded:
            return self.model.encode(prompts, padded=False)
        ids = self.model.tokenize(prompts)
        rows = self.model.encode(prompts, padded=True)
        return [r[: min(self.model.seen_rows(len(i)), r.shape[0])] for r, i in zip(rows, ids)]


def _spread(prompts: tuple[str, ...], count: int) -> tuple[str, ...]:
    """``count`` prompts evenly spaced through ``prompts`` (all of them when ``count`` is 0 or more)."""
    if count <= 0 or len(prompts) <= count:
        return prompts
    return tuple(prompts[i] for i in np.linspace(0, len(prompts) - 1, count).round().astype(int))


def _solution_deltas(solution, space, weights) -> dict[str, np.ndarray]:
    sol = solution.space(space.name)
    return {
        site.module_path: sol.delta(site.module_path, weights[site.module_path]) if sol.edits(site.role) else np.zeros_like(weights[site.module_path])
        for site in space.sites
    }


def _interference(patch, spec, preset, model, space, weights, deltas, own_rows, options) -> tuple:
    """(matrix, per-layer matrices, note): row i = what erasing concept i alone does to each concept j."""
    entries = ordered_entries(spec)
    if len(entries) > options.interference_max and len(entries) > 1:
        return None, None, (
            f"not measured: {len(entries)} concepts > --interference-max {options.interference_max} "
            "(each needs its own solve)"
        )
    if len(entries) == 1:
        solos, note = [deltas], "one concept: the patch itself"
    else:
        pipeline = Pipeline.parse(patch.metadata.get("erasec.pipeline") or preset.pipeline)
        solos, note = [], f"each concept re-solved alone with {pipeline}"
        for entry in entries:
            lowering = Lowering.for_pipeline(model, pipeline)
            program = pipeline.apply(lowering.lower(dataclasses.replace(spec, erase=(entry,)), preset))
            solos.append(_solution_deltas(program.solution, space, weights))
    matrix = tuple(tuple(displacement(k, g, weights, solo) for k, g in own_rows) for solo in solos)
    by_layer = [[displacement_by_layer(k, g, weights, solo) for k, g in own_rows] for solo in solos]
    layers = tuple((path, tuple(tuple(cell[path] for cell in row) for row in by_layer)) for path in weights)
    return matrix, layers, note


def evaluate_patch(
    patch_path: str,
    model_location: str,
    options: EvalOptions = EvalOptions(),
    *,
    progress: Callable[[str], None] = lambda stage: None,  # called as each of STAGES begins
) -> EvalResult:
    """Every metric of docs/evaluation.md for the patch at ``patch_path`` on ``model_location``."""
    from ..models.embedding_cache import CachingModel, EmbeddingCache
    from ..models.patch_model import open_patch_model  # torch and transformers load here

    progress("open")
    patch = read_patch(patch_path)
    spec = spec_from_dict({**patch.spec, "model": model_location}, source=f"{patch.path}:erasec.spec")
    preset = PRESETS[spec.method]
    rows = [row for name in options.suites for row in load_suite(name)]
    if options.prompts:
        rows += load_prompt_file(options.prompts)
    from ..models.placement import EncodeOptions, placed

    placement = EncodeOptions(device=options.device, dtype=options.encoder_dtype, batch=options.encode_batch).resolve()
    if options.sequence_length is not None and patch.sequence_length is None:
        raise EvalError(f"{patch.path}: --sequence-length {options.sequence_length}: a {patch.base['family']} patch has "
                        "no T5 padding (diffusion transformers only)")
    # a DiT at the patch's recorded T5 padding, or --sequence-length's (reported as such)
    opened = open_patch_model(patch, model_location, allow_pickle=options.allow_pickle,
                              sequence_length=options.sequence_length)
    model = RecordingModel(placed(opened, placement))  # encoders where --device says (placement.py)
    patch_target(patch, model.target, model.location)  # every edited module exists with the patch's shapes
    space = model.target.spaces[0]  # the K/V key space (SDXL's pooled space is the build's to score)
    base = model.kv_weights()
    weights = {site.module_path: np.asarray(base[site.module_path], dtype=np.float64) for site in space.sites}
    edited = set(patch.layers())
    deltas = {
        path: patch.layer_delta(path) if path in edited else np.zeros_like(w0) for path, w0 in weights.items()
    }
    requests = _requests(spec, preset)
    if not requests:
        raise EvalError(f"{patch.path}: its spec erases nothing; nothing to evaluate")
    sorted_prompts = sort_prompts(requests, rows)
    sorted_prompts = dataclasses.replace(
        sorted_prompts, unrelated={k: _spread(v, options.max_unrelated) for k, v in sorted_prompts.unrelated.items()}
    )

    progress("encode")
    encoder = _Rows(model)
    everything = [p for r in requests for pair in r.own for p in pair]
    everything += [p for pairs in sorted_prompts.pairs.values() for pair in pairs for p in pair]
    everything += [p for group in (sorted_prompts.targets, sorted_prompts.unrelated) for ps in group.values() for p in ps]
    everything += list(spec.preserve)
    model.encode(sorted(set(everything)), padded=encoder.padded)  # one batched pass; the rest is answered from the record

    progress("metrics")
    own_rows = [encoder.pairs(r.own) for r in requests]
    concepts = []
    for request, (keys, guides) in zip(requests, own_rows):
        pairs = sorted_prompts.pairs.get(request.concept, ())
        targets = sorted_prompts.targets.get(request.concept, ())
        concepts.append(
            ConceptResult(
                concept=request.concept,
                anchor=request.anchor,
                efficacy=efficacy(keys, guides, weights, deltas),
                generality=efficacy(*encoder.pairs(pairs), weights, deltas) if pairs
                else None,
                targets=specificity(encoder.all(targets), weights, deltas) if targets else None,
                recoverability=recoverability(keys, weights, deltas, options.attack_lambda),
                examples=tuple(p for p, _ in pairs[:3]),
                prompts=tuple(p for p, _ in request.own),
            )
        )
    # what the patch was solved to keep: not the preserve prompts filter-preserve dropped for naming an
    # erased concept (erasec.report.dropped_preserve), which the patch is meant to move
    dropped = set((patch.report or {}).get("dropped_preserve", []))
    preserved = [prompt for prompt in spec.preserve if prompt not in dropped]
    groups = ([("preserved", preserved)] if preserved else []) + list(sorted_prompts.unrelated.items())
    kept = tuple((group, specificity(encoder.all(prompts), weights, deltas)) for group, prompts in groups if prompts)
    per_prompt = {}
    for _, prompts in groups:
        each = encoder.each(prompts)
        moved, outputs = output_change(np.concatenate(each), weights, deltas)
        starts = np.cumsum([0] + [r.shape[0] for r in each[:-1]])
        ratios = np.add.reduceat(moved, starts) / np.maximum(np.add.reduceat(outputs, starts), np.finfo(float).tiny)
        per_prompt.update(zip(prompts, (1.0 - np.sqrt(ratios)).tolist()))
    least = tuple(sorted(per_prompt.items(), key=lambda item: (item[1], item[0]))[:WORST_SHOWN])
    landed = ((patch.report or {}).get("drift") or {}).get(space.name, {}).get("scale", 1.0)
    pipeline_text = patch.metadata.get("erasec.pipeline") or preset.pipeline
    # the curve lowers the whole spec (the method's prior too): through the embedding cache, the rows
    # the patch's build encoded are read back instead of encoded again
    cached = CachingModel(model.inner, EmbeddingCache.at())
    curve, curve_note = drift_curve(spec, preset, pipeline_text, cached, landed)

    progress("interference")
    matrix, layers, note = _interference(patch, spec, preset, model, space, weights, deltas, own_rows, options)
    return EvalResult(
        patch=str(patch.path),
        name=patch.name,
        version=patch.version,
        model=model_location,
        method=spec.method,
        layers=len(weights),
        edited_layers=len(edited & set(weights)),
        layer_kind="text-entry" if any(site.role == "context" for site in space.sites) else "K/V",
        concepts=tuple(concepts),
        specificity=kept,
        least_kept=least,
        interference=matrix,
        interference_note=note,
        interference_layers=layers,
        attack_lambda=options.attack_lambda,
        drift_curve=curve,
        drift_note=curve_note,
        sequence_length=model.sequence_length,
        built_sequence_length=patch.sequence_length,
    )
