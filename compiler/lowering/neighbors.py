"""Neighbours preserved automatically: the concepts nearest each erased one, from a vocabulary, in
the model's own key space, added as preserve rows (issue 15 deliverable 1).

Why. A closed-form K/V edit moves every key by ``ΔW k``, and ``ΔW`` is largest along the erased
keys: a key near an erased one moves almost as much (issue 15 measured neighbours moving about as much
as paraphrases, U/N ≈ 1.1). RealEra (Liu et al., 2024, arXiv 2410.09140) regularises "beyond the
concept" and SPEED (Li et al., 2025, arXiv 2503.07392) filters its prior by influence for the same
reason: the rows worth preserving are the ones the edit would move, i.e. the erased key's near
neighbours, not a random prior.

What. For each erase request r with phrases P_r (concept and synonyms), and each vocabulary entry v
(compiler/data/neighbors/ and the spec's own ``options.neighbors.vocabulary``), both encoded alone and
read at the subject (last-token) row, ``sim(v, r) = max_{p ∈ P_r} cos_G(k_v, k_p)`` with
``cos_G(a, b) = aᵀGb / (‖a‖_G ‖b‖_G)`` and G = Σ_l W0_lᵀW0_l, the site Gram of the edited sites
(``SpaceProgram.site_gram``, the metric in which a key's K/V outputs are compared: two keys close in
it give close attention inputs in every edited layer). An entry is *the concept*, not a neighbour,
when ``sim(v, r') ≥ radius`` for any request r' (a paraphrase inside the concept's radius) or when
it names an erased phrase as whole words (filter-preserve's rule); it is never preserved. Among the
rest, each request keeps its ``count`` most similar entries (ties by name); the union becomes
preserve rows — the neighbour's subject row at weight ``weight`` — labelled ``<neighbor> NAME``.

Where. Mining needs the text encoder, so it is lowering, not a pass (passes/ cannot encode). Rows go
through the model's ``encode``, i.e. the build's ``CachingModel``: a warm build reads the ~2,200
built-in entries from the embedding cache. Which neighbours were kept, with their cosines, is a
``note`` in the build summary, and their rows carry the label in the IR's provenance.

A name the *spec's* vocabulary lists that names an erased phrase is an error (the spec asks to both
erase and keep it); the built-in vocabulary's entries that do are only left out, and counted.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import numpy as np
from erasec.ir import (
    Diagnostic,
    EditProgram,
    MomentSum,
    PreserveRows,
    Provenance,
    phrase_pattern,
)

from ..errors import SpecError
from ..frontend.neighbors import Neighbors
from ..frontend.presets import Preset
from ..frontend.spec import Spec
from .prompts import ordered_entries

# the built-in vocabulary's lists, one kind a file (compiler/data/README.md gives sources and licences)
BUILTIN_KINDS = ("artists", "public-figures", "characters", "brands", "places", "landmarks", "objects", "safe")
LABEL = "<neighbor> "  # the provenance prompt of a mined row: "<neighbor> Claude Monet"
# ``rows: all``: each kept neighbour is preserved in these contexts, every row after BOS (padding included):
# a prompt about a neighbour moves over all its rows, not only at the name's last token (issue 15)
NEIGHBOR_TEMPLATES = ("{}", "a photo of {}", "a painting by {}", "a picture of {}")


def builtin_vocabulary() -> tuple[tuple[str, str], ...]:
    """(name, kind) of every entry of the shipped vocabulary, first spelling kept, in file order."""
    folder = resources.files("erasec.compiler") / "data" / "neighbors"
    entries: dict[str, tuple[str, str]] = {}
    for kind in BUILTIN_KINDS:
        for line in (folder / f"{kind}.txt").read_text(encoding="utf-8").splitlines():
            name = line.strip()
            if name and not name.startswith("#"):
                entries.setdefault(name.casefold(), (name, kind))
    return tuple(entries.values())


def neighbor_settings(spec: Spec, preset: Preset) -> Neighbors | None:
    """The spec's ``options.neighbors``, else the method's (``Preset.neighbors``); None when off."""
    settings = spec.options.neighbors
    if settings is None and preset.neighbors > 0:
        settings = Neighbors(count=preset.neighbors, rows=preset.neighbor_rows)
    return settings if settings is not None and settings.count > 0 else None


def _erased_names(spec: Spec, settings: Neighbors) -> None:
    """Refuse a spec vocabulary entry that names an erased phrase: preserving it would weaken the erasure."""
    phrases = {p.casefold(): e.concept for e in spec.erase for p in (e.concept, *e.synonyms)}
    pattern = phrase_pattern(list(phrases))
    for name, origin in zip(settings.names, settings.origins or ("",) * len(settings.names)):
        found = pattern.search(name) if pattern is not None else None
        if found:
            where = f" ({origin})" if origin else ""
            raise SpecError(
                f"{spec.where('options.neighbors')}: vocabulary entry {name!r}{where} names the erased concept "
                f"{phrases[found.group().casefold()]!r}; a neighbour is preserved, so it cannot also be erased — "
                "remove it from the vocabulary"
            )


def _subject_rows(lowering, prompts: list[str]) -> tuple[np.ndarray, list[int]]:
    """The subject (last-token) row of each prompt encoded alone and its token position, encoded
    ``lowering.STREAM`` prompts at a time (the vocabulary's rows are never all held at once)."""
    rows, tokens = np.zeros((len(prompts), lowering.model.target.spaces[0].dim)), []
    for start in range(0, len(prompts), lowering.STREAM):
        batch = prompts[start : start + lowering.STREAM]
        ids = lowering._ids(batch)
        encoded = lowering._encode(batch, False)
        tokens += [len(ids[p]) - 2 for p in batch]
        rows[start : start + len(batch)] = [encoded[p][len(ids[p]) - 2] for p in batch]
    return rows, tokens


def _cosines(a: np.ndarray, b: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """cos_G between every row of ``a`` and every row of ``b`` (module docstring)."""
    ga = a @ gram
    norm_a = np.sqrt(np.maximum(np.einsum("ij,ij->i", ga, a), 1e-300))
    norm_b = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", b, gram, b), 1e-300))
    return (ga @ b.T) / norm_a[:, None] / norm_b[None, :]


def mine(lowering, spec: Spec, program: EditProgram, settings: Neighbors) -> EditProgram:
    """``program`` with each request's mined neighbours added to its first key space's preserve rows,
    and a note per request naming them (module docstring)."""
    _erased_names(spec, settings)
    space = program.spaces[0]
    gram = space.site_gram if space.site_gram is not None else np.eye(space.preserve.keys.shape[1])
    erased = [p for e in spec.erase for p in (e.concept, *e.synonyms)]
    pattern = phrase_pattern(erased)
    kept = {p.casefold() for p in spec.preserve}  # already preserved by the spec: not added twice
    vocabulary = ([(n, k) for n, k in builtin_vocabulary()] if settings.builtin else []) + [(n, "spec") for n in settings.names]
    seen: set[str] = set()
    candidates, named = [], 0
    for name, kind in vocabulary:
        folded = name.casefold()
        if folded in seen or folded in kept:
            continue
        seen.add(folded)
        if pattern is not None and pattern.search(name):
            named += 1  # the built-in list names an erased concept: it is the concept, never a neighbour
            continue
        candidates.append((name, kind))
    entries = ordered_entries(spec)
    phrases = [(entry.concept, p) for entry in entries for p in (entry.concept, *entry.synonyms)]
    concept_rows, _ = _subject_rows(lowering, sorted({p for _, p in phrases}))
    index = {p: i for i, p in enumerate(sorted({p for _, p in phrases}))}
    names = [name for name, _ in candidates]
    rows, tokens = _subject_rows(lowering, names)
    similarity = _cosines(concept_rows, rows, gram) if names else np.zeros((len(index), 0))
    inside = (similarity >= settings.radius).any(axis=0)  # within some erased concept's radius
    chosen: dict[int, None] = {}
    notes = []
    for entry in entries:
        own = similarity[[index[p] for p in (entry.concept, *entry.synonyms)]].max(axis=0)
        order = sorted((i for i in range(len(names)) if not inside[i]), key=lambda i: (-own[i], names[i]))
        picks = order[: settings.count]
        chosen.update(dict.fromkeys(picks))
        listed = ", ".join(f"{names[i]!r} {own[i]:.2f}" for i in picks)
        notes.append(f"{entry.concept!r} keeps {len(picks)} neighbours (cos_G): {listed}")
    picked = sorted(chosen, key=lambda i: names[i].casefold())
    within = int(inside.sum())
    summary = f"{len(candidates)} vocabulary entries considered, {within} within radius {settings.radius:g} of an erased concept"
    summary += f" and {named} naming one left out" if named else " left out"
    if settings.rows == "all":
        extra, folded = _all_rows(lowering, [names[i] for i in picked], settings.weight, space.preserve.folded, gram.shape[0])
        summary += f"; {len(picked)} neighbours preserved over every row in {len(NEIGHBOR_TEMPLATES)} templates"
    else:
        extra = PreserveRows(
            keys=rows[picked] if picked else np.zeros((0, gram.shape[0])),
            weights=np.full(len(picked), settings.weight),
            provenance=tuple(
                Provenance(request="preserve", prompt=LABEL + names[i], token=tokens[i]) for i in picked
            ),
        )
        folded = space.preserve.folded
    preserve = space.preserve
    merged = PreserveRows(
        keys=np.concatenate([preserve.keys, extra.keys]),
        weights=np.concatenate([preserve.weights, extra.weights]),
        provenance=preserve.provenance + extra.provenance,
        folded=folded,
    )
    program = replace(program, spaces=(replace(space, preserve=merged), *program.spaces[1:]))
    return program.with_diagnostics(
        *(Diagnostic(origin="neighbors", severity="note", message=m) for m in (*notes, summary))
    )


def _all_rows(lowering, names: list[str], weight: float, folded, dim: int):
    """``rows: all``: every row after BOS of each neighbour in each of ``NEIGHBOR_TEMPLATES`` (77 padded
    rows, BOS dropped: it is the same for every prompt), each at ``weight``. The subject row of each
    prompt stays explicit (its provenance names the neighbour); the rest fold into the preserve moments
    when the pipeline reads no preserve rows (``lowering.fold_preserve``), else stay explicit too.
    Returns (explicit rows, folded moments merged with ``folded``)."""
    prompts = [(name, template.format(name)) for name in names for template in NEIGHBOR_TEMPLATES]
    fold = MomentSum(dim, cross=False) if lowering.fold_preserve else None
    keys, provenance = [], []
    for start in range(0, len(prompts), lowering.STREAM):
        batch = prompts[start : start + lowering.STREAM]
        ids = lowering._ids([p for _, p in batch])
        encoded = lowering._encode([p for _, p in batch], True)
        for name, prompt in batch:
            array = encoded[prompt]
            subject = len(ids[prompt]) - 2
            tokens = np.arange(1, array.shape[0])
            keep = tokens == subject if fold is not None else np.ones(tokens.size, dtype=bool)
            keys.append(array[tokens[keep]])
            provenance += [Provenance(request="preserve", prompt=LABEL + prompt, token=int(t)) for t in tokens[keep]]
            if fold is not None:
                fold.add(array[tokens[~keep]], np.full(int((~keep).sum()), weight), [LABEL + prompt])
    explicit = np.concatenate(keys) if keys else np.zeros((0, dim))
    extra = PreserveRows(keys=explicit, weights=np.full(explicit.shape[0], weight), provenance=tuple(provenance))
    mine_folded = fold.result() if fold is not None else None
    if mine_folded is None or folded is None:
        return extra, folded if mine_folded is None else mine_folded
    return extra, replace(
        folded,
        gram=folded.gram + mine_folded.gram,
        plain=folded.plain + mine_folded.plain,
        rows=folded.rows + mine_folded.rows,
        weight=folded.weight + mine_folded.weight,
        prompts=tuple(sorted({*folded.prompts, *mine_folded.prompts})),
    )
