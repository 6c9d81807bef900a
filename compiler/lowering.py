"""Lowering: a spec and a model become an ``EditProgram`` (text → key-space rows).

Row selection follows the method (research/methods.md §1.2, §1.3, §10 items 1–9):

* ``last_token`` (UCE 2025): one row per prompt at index ``len(ids) − 2`` — the last subject token;
  0 (BOS) for the empty prompt. Guides the same way. Encoded at the prompt's real token length,
  which is exact because CLIP is causal.
* ``legacy_span`` (UCE original): prompt and guide padded to 77; with ``i``/``j`` their last-subject
  indices and ``f = max(i, j)``, rows ``E_old[i : 77 − (f − i)]`` pair with ``E_new[j : 77 − (f − j)]``
  position by position (padding included); every retain prompt contributes all 77 rows, the empty
  prompt is always retained, and the preserve weight is ``max(0.1, 1/|retain|)``.
* ``time_aligned`` (TIME, research/methods.md §2): all 77 rows of the prompt, each mapped to the
  guide's row of the same token — walking the prompt's tokens, the guide pointer advances to the
  next equal token id (an unmatched token keeps the pointer's position); rows after the prompt's EoT
  follow the guide's consecutively, clipped at 76. (TIME also maps "an" to "a"; not done here.)

Erase weights are ``erase_scale × strength``, divided by the number of erase prompts when the
method averages its targets (SPEED's ``S_tt``, ``S_at`` are means). The lowering also records,
per key space, ``G = Σ_l W0_lᵀ W0_l`` over the edited sites (the metric of the adversarial and
compress passes), the edited roles, and each request's phrases (concept and synonyms).

Prompts for an erase entry: the concept and its synonyms, then each template applied to each of
them; a template's guide is the same template applied to the anchor (as the reference's
``--expand_prompts`` does); an empty anchor stands for the method's blank guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from erasec.ir import Diagnostic, EditProgram, EraseRows, HardRows, PreserveRows, Provenance, SpaceProgram, empty_hard
from erasec.passes.presets import Preset

from .errors import ModelError
from .spec import Spec


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The method defaults after the spec's options are applied."""

    lam: float
    erase_scale: float
    preserve_scale: float | None  # None: the legacy rule max(0.1, 1/|retain|)
    prior_scale: float  # total weight of the preserve prior's rows (0: no prior)


def resolve_settings(spec: Spec, preset: Preset) -> Settings:
    options = spec.options
    preserve = options.preserve_scale
    if preserve is None and preset.preserve_scale != "legacy":
        preserve = float(preset.preserve_scale)
    return Settings(
        lam=preset.lam if options.lam is None else options.lam,
        erase_scale=preset.erase_scale if options.erase_scale is None else options.erase_scale,
        preserve_scale=preserve,
        prior_scale=(preset.prior_scale if options.prior_scale is None else options.prior_scale) if preset.prior else 0.0,
    )


def prior_prompts(name: str) -> list[str]:
    """The prompts of a shipped preserve prior (``compiler/data/prior-<name>.txt``)."""
    from importlib import resources

    text = (resources.files("erasec.compiler") / "data" / f"prior-{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def erase_pairs(spec: Spec, preset: Preset) -> list[tuple[str, str, str, float]]:
    """(request, prompt, guide, strength) for every erase prompt, in spec order."""
    pairs = []
    for entry in ordered_entries(spec):
        names = (entry.concept, *entry.synonyms)
        anchor = entry.anchor if entry.anchor.strip() else preset.blank_guide
        for name in names:
            pairs.append((entry.concept, name, anchor, entry.strength))
        for template in entry.templates:
            for name in names:
                pairs.append((entry.concept, template.format(name), template.format(entry.anchor), entry.strength))
    return pairs


def ordered_entries(spec: Spec):
    """The erase entries in a canonical order: a spec's list order changes nothing it builds."""
    return sorted(spec.erase, key=lambda entry: (entry.concept.casefold(), entry.concept))


def retain_prompts(spec: Spec, preset: Preset) -> list[str]:
    prompts = sorted(spec.preserve, key=lambda prompt: (prompt.casefold(), prompt))
    if preset.preserve_empty and "" not in prompts:
        prompts.insert(0, "")
    return prompts


def time_alignment(source: list[int], guide: list[int], length: int = 77) -> list[int]:
    """For each of the ``length`` source positions, the guide position whose row is its target."""
    mapping, pointer = [], 0
    for token in source:
        found = next((x for x in range(pointer, len(guide)) if guide[x] == token), None)
        if found is None:
            found = min(pointer, len(guide) - 1)
        mapping.append(found)
        pointer = found + 1
    last = mapping[-1]
    mapping.extend(min(last + step, length - 1) for step in range(1, length - len(source) + 1))
    return mapping[:length]


class Lowering:
    """Turns prompts into rows with one model; caches encodings within one build."""

    def __init__(self, model) -> None:
        self.model = model

    def _encode(self, prompts: list[str], padded: bool) -> dict[str, np.ndarray]:
        distinct = sorted(set(prompts))
        rows = self.model.encode(distinct, padded=padded)
        for prompt, array in zip(distinct, rows):
            if not np.all(np.isfinite(array)):
                raise ModelError(
                    f"{self.model.location}: the text encoder gives NaN or infinity for {prompt!r}; "
                    "its weights are damaged"
                )
        return dict(zip(distinct, rows))

    def _ids(self, prompts: list[str]) -> dict[str, list[int]]:
        distinct = sorted(set(prompts))
        return dict(zip(distinct, self.model.tokenize(distinct)))

    def lower(self, spec: Spec, preset: Preset) -> EditProgram:
        program = self._lower(spec, preset)
        erased = {phrase.casefold(): entry.concept for entry in spec.erase for phrase in (entry.concept, *entry.synonyms)}
        clashes = sorted({p for p in spec.preserve if p.casefold() in erased})
        return program.with_diagnostics(
            *(
                Diagnostic(
                    origin="lowering",
                    severity="warning",
                    message=f"preserve prompt {p!r} is the erased concept {erased[p.casefold()]!r}: the two pull "
                    "against each other; remove it from preserve (methods with filter-preserve drop it)",
                )
                for p in clashes
            )
        )

    def _lower(self, spec: Spec, preset: Preset) -> EditProgram:
        settings = resolve_settings(spec, preset)
        space = self.model.target.spaces[0]
        pairs = erase_pairs(spec, preset)
        retain = retain_prompts(spec, preset)
        texts = [p for _, p, _, _ in pairs] + [g for _, _, g, _ in pairs] + retain
        ids = self._ids(texts)
        last = {prompt: len(tokens) - 2 for prompt, tokens in ids.items()}
        padded = preset.rows != "last_token"
        encoded = self._encode(texts + [""], padded)
        if not padded:
            # the empty prompt's 77 rows are the unconditional branch's input: always padded
            encoded_empty = self.model.encode([""], padded=True)[0]
        else:
            encoded_empty = encoded[""]

        keys, guides, weights, provenance = [], [], [], []
        share = 1.0 / len(pairs) if preset.erase_weighting == "mean" else 1.0
        for request, prompt, guide, strength in pairs:
            weight = settings.erase_scale * strength * share
            if preset.rows == "legacy_span":
                i, j = last[prompt], last[guide]
                f = max(i, j)
                old = encoded[prompt][i : 77 - (f - i)]
                new = encoded[guide][j : 77 - (f - j)]
                tokens = range(i, i + old.shape[0])
            elif preset.rows == "time_aligned":
                old = encoded[prompt]
                new = encoded[guide][time_alignment(ids[prompt], ids[guide], old.shape[0])]
                tokens = range(old.shape[0])
            else:
                old = encoded[prompt][last[prompt]][None]
                new = encoded[guide][last[guide]][None]
                tokens = range(last[prompt], last[prompt] + 1)
            keys.append(old)
            guides.append(new)
            weights.extend([weight] * old.shape[0])
            provenance.extend(Provenance(request=request, prompt=prompt, token=t) for t in tokens)
        erase = EraseRows(
            keys=np.concatenate(keys),
            guides=np.concatenate(guides),
            weights=np.array(weights),
            provenance=tuple(provenance),
        )

        preserve_scale = settings.preserve_scale
        if preserve_scale is None:
            preserve_scale = max(0.1, 1.0 / max(len(retain), 1))
        p_keys, p_prov = [], []
        for prompt in retain:
            if padded:
                p_keys.append(encoded[prompt])
                p_prov.extend(Provenance(request="preserve", prompt=prompt, token=t) for t in range(77))
            else:
                p_keys.append(encoded[prompt][last[prompt]][None])
                p_prov.append(Provenance(request="preserve", prompt=prompt, token=last[prompt]))
        p_weights = [preserve_scale] * len(p_prov)
        if settings.prior_scale > 0:
            # the prior's rows: every token row of each prompt (BOS excluded: it is the same for all)
            prior = prior_prompts(preset.prior)
            rows = [r[1:] for r in self.model.encode(prior, padded=False)]
            count = sum(r.shape[0] for r in rows)
            for prompt, prompt_rows in zip(prior, rows):
                p_keys.append(prompt_rows)
                p_prov.extend(
                    Provenance(request="preserve", prompt=f"<prior {preset.prior}> {prompt}", token=t + 1)
                    for t in range(prompt_rows.shape[0])
                )
            p_weights.extend([settings.prior_scale / count] * count)
        preserve = PreserveRows(
            keys=np.concatenate(p_keys) if p_keys else np.zeros((0, space.dim)),
            weights=np.array(p_weights, dtype=np.float64),
            provenance=tuple(p_prov),
        )
        invariant_rows = HardRows(
            keys=encoded_empty,
            provenance=tuple(Provenance(request="invariant", prompt="", token=t) for t in range(encoded_empty.shape[0])),
        )
        program_space = SpaceProgram(
            space=space.name,
            lam=settings.lam,
            erase=erase,
            preserve=preserve,
            hard=empty_hard(space.dim),
            invariant_rows=invariant_rows,
            site_gram=self.model.site_gram(space, preset.roles),
            roles=preset.roles,
        )
        pooled = [self._pooled(space, pairs, retain, settings, preserve_scale) for space in self.model.target.spaces[1:]]
        return EditProgram(
            target=self.model.target,
            requests=tuple(entry.concept for entry in ordered_entries(spec)),
            spaces=(program_space, *pooled),
            phrases=tuple((entry.concept, *entry.synonyms) for entry in ordered_entries(spec)),
        )

    def _pooled(self, space, pairs, retain: list[str], settings: Settings, preserve_scale: float) -> SpaceProgram:
        """SDXL's pooled space (``options.pooled``): one pooled row per prompt, the same ridge system
        on ``add_embedding.linear_1``'s pooled columns; the empty prompt's row is kept exactly."""
        texts = sorted({p for _, p, _, _ in pairs} | {g for _, _, g, _ in pairs} | set(retain) | {""})
        rows = dict(zip(texts, self.model.encode_pooled(texts)))
        eot = {prompt: len(ids) - 1 for prompt, ids in self._ids(texts).items()}  # the pooled (EoT) position
        erase = EraseRows(
            keys=np.stack([rows[prompt] for _, prompt, _, _ in pairs]),
            guides=np.stack([rows[guide] for _, _, guide, _ in pairs]),
            weights=np.array([settings.erase_scale * strength for _, _, _, strength in pairs]),
            provenance=tuple(Provenance(request=r, prompt=p, token=eot[p]) for r, p, _, _ in pairs),
        )
        preserve = PreserveRows(
            keys=np.stack([rows[prompt] for prompt in retain]) if retain else np.zeros((0, space.dim)),
            weights=np.full(len(retain), preserve_scale),
            provenance=tuple(Provenance(request="preserve", prompt=p, token=eot[p]) for p in retain),
        )
        return SpaceProgram(
            space=space.name,
            lam=settings.lam,
            erase=erase,
            preserve=preserve,
            hard=empty_hard(space.dim),
            invariant_rows=HardRows(keys=rows[""][None], provenance=(Provenance(request="invariant", prompt="", token=1),)),
            site_gram=self.model.site_gram(space, ("pooled",)),
            roles=("pooled",),
        )
