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
* ``eot_pad`` (TRCE stage 1, Chen et al., ICCV 2025, arXiv 2503.07389; research/methods.md §5.2): the
  prompt's first end-of-text row and every padding row after it (``len(ids) − 1 … 76``), row
  ``EoT + t`` paired with the guide's ``EoT + t`` clipped at 76 — the rows that carry a whole
  prompt's meaning, for concepts no single word names. TRCE's default weights keep only the first
  EoT row; this rule keeps the padding too. Implicit entries' trigger pairs take the method's
  ``implicit_rows`` rule (this one unless ``options.implicit_rows`` says otherwise); their names
  and every other pair take ``rows``.

Erase weights are ``erase_scale × strength``, divided by the number of erase prompts when the
method averages its targets (SPEED's ``S_tt``, ``S_at`` are means). The lowering also records,
per key space, ``G = Σ_l W0_lᵀ W0_l`` over the edited sites (the metric of the adversarial and
compress passes), the edited roles, and each request's phrases (concept and synonyms).

Prompts for an erase entry: the concept and its synonyms, then each template applied to each of
them; a template's guide is the same template applied to the anchor (as the reference's
``--expand_prompts`` does); an empty anchor stands for the method's blank guide.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from erasec.ir import (
    Diagnostic,
    EditProgram,
    EraseRows,
    HardRows,
    MomentSum,
    PreserveRows,
    Provenance,
    SiteRows,
    SpaceProgram,
    empty_hard,
    phrase_pattern,
)
from erasec.compiler.frontend.presets import Preset

from ..errors import ModelError
from ..frontend.spec import Spec
from ..models.families import FAMILIES
from ..models.protocol import TextModel
from .neighbors import mine, neighbor_settings
from .prompts import Settings, erase_pairs, ordered_entries, prior_prompts, resolve_settings, retain_prompts, trigger_pairs
from .rows import RowRule, RuntimeRows, TriggerRows, length_batches


class Lowering:
    """Turns prompts into rows with one model, streaming them in batches of ``STREAM`` prompts of
    similar token length.

    When a row set holds more rows than the key space has dimensions, its rows are folded into
    float64 moments (``ir.Moments``) batch by batch as they are encoded, and only each prompt's
    subject row (the last-token row every preset shares) stays explicit: memory is O(d² + prompts·d)
    instead of O(rows·d), and every sum the solve forms is unchanged. Erase rows fold only with
    ``fold_erase`` (the driver passes it when no pass reads erase rows one by one), preserve rows
    unless ``fold_preserve`` is off (every row kept, as the tests compare); the rows of a preserve
    prompt that names an erased phrase always stay explicit, so ``filter-preserve`` can drop them.
    """

    STREAM = 64  # prompts (erase pairs) encoded per batch

    def __init__(
        self,
        model: TextModel,
        *,
        fold_erase: bool = False,
        fold_preserve: bool = True,
        attack_retain: str = "blank",
        site_weights: bool = False,
    ) -> None:
        self.model = model
        self.fold_erase = fold_erase
        self.fold_preserve = fold_preserve
        self.site_weights = site_weights  # supply each edited site's W0 (ir.SiteRows) for the passes that read it
        self.attack_retain = attack_retain  # RECE's rounds: "blank" (' ' per erase prompt) or "spec" ('' + preserve)

    @classmethod
    def for_pipeline(cls, model: TextModel, pipeline) -> "Lowering":
        """The lowering whose rows ``pipeline`` will transform: erase and preserve rows fold unless a pass
        reads them; base weights come along when a pass reads them; the retain set of RECE's rounds is
        the ``rece`` pass's."""
        retain = next((p.retain for p in pipeline.passes if p.name == "rece"), "blank")
        return cls(
            model,
            fold_erase=not pipeline.reads_erase_rows(),
            fold_preserve=not pipeline.reads_preserve_rows(),
            attack_retain=retain,
            site_weights=pipeline.reads_site_weights(),
        )

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
        neighbors = neighbor_settings(spec, preset)
        if neighbors is not None:  # the concepts nearest each erased one, preserved (neighbors.py)
            program = mine(self, spec, program, neighbors)
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

    def _for_model(self, preset: Preset) -> Preset:
        """The preset as it applies to this model. A diffusion transformer (``families/dit.py``) is
        edited on every row its runtime feeds, whatever the preset's row rule (``rows.RuntimeRows``),
        and at its text-entry sites when the preset names K/V roles it does not have (FLUX, Chroma, SD3:
        ``context_embedder``); docs/models.md, "Diffusion transformers"."""
        if not FAMILIES[self.model.family].transformer:
            return preset
        present = {site.role for site in self.model.target.spaces[0].sites}
        roles = tuple(role for role in preset.roles if role in present) or tuple(sorted(present))
        return replace(preset, rows="runtime", roles=roles)

    def _lower(self, spec: Spec, preset: Preset) -> EditProgram:
        preset = self._for_model(preset)
        settings = resolve_settings(spec, preset)
        space = self.model.target.spaces[0]
        triggers = trigger_pairs(spec, preset)
        pairs = erase_pairs(spec, preset) + triggers
        retain = retain_prompts(spec, preset)
        prior = prior_prompts(preset.prior) if settings.prior_scale > 0 else []
        ids = self._ids([p for _, p, _, _ in pairs] + [g for _, _, g, _ in pairs] + retain + prior + [""])
        last = {prompt: len(tokens) - 2 for prompt, tokens in ids.items()}
        padded = preset.rows != "last_token"
        # the empty prompt's 77 rows are the unconditional branch's input: always padded
        encoded_empty = self.model.encode([""], padded=True)[0]
        rows = RuntimeRows(ids, last, self.model.seen_rows) if preset.rows == "runtime" else RowRule(preset.rows, ids, last)
        # the empty prompt's rows the denoiser sees, and for Wan its first zero-filled row (the constant row)
        encoded_empty = encoded_empty[: min(rows.visible("", encoded_empty.shape[0]) + 1, encoded_empty.shape[0])]
        # implicit entries' trigger pairs take their own rule (a transformer's runtime rule already takes
        # every row), and all erase prompts are padded if it needs it
        trigger_rule = spec.options.implicit_rows or preset.implicit_rows
        erase_rule = rows
        if triggers and preset.rows != "runtime":
            erase_rule = TriggerRows(rows, RowRule(trigger_rule, ids, last), [(p, g) for _, p, g, _ in triggers])
        implicit_padded = erase_rule is not rows and trigger_rule != "last_token"
        erase_padded = padded or implicit_padded

        share = 1.0 / len(pairs) if preset.erase_weighting == "mean" else 1.0
        erase_rows = sum(erase_rule.count(prompt, guide) for _, prompt, guide, _ in pairs)
        erase = self._erase_rows(pairs, erase_rule, erase_padded, settings.erase_scale * share, space.dim, erase_rows > space.dim)

        preserve_scale = settings.preserve_scale
        if preserve_scale is None:
            preserve_scale = max(0.1, 1.0 / max(len(retain), 1))
        pattern = phrase_pattern([p for entry in spec.erase for p in (entry.concept, *entry.synonyms)])
        # the user's prompts, then the prior's rows (every token row of each prompt; BOS excluded: it is
        # the same for all) with its total weight spread evenly; when trigger rows reach into the padding,
        # the preserved prompts' padding rows are held too (docs/compiler.md, "Implicit concepts")
        which = "all" if erase_padded else "subject"
        sources = [(prompt, prompt, preserve_scale, which) for prompt in retain]
        prior_padded = implicit_padded or preset.prior_rows == "padded"
        prior_rows = sum(self.model.padded_rows - 1 if prior_padded else len(ids[prompt]) - 1 for prompt in prior)
        prior_which = "padded" if prior_padded else "tokens"
        if isinstance(rows, RuntimeRows):  # a DiT's prior: every row its runtime feeds (the padding carries text)
            prior_rows = sum(rows.visible(prompt, self.model.padded_rows) for prompt in prior)
            prior_which = "all"
        sources += [(p, f"<prior {preset.prior}> {p}", settings.prior_scale / max(prior_rows, 1), prior_which) for p in prior]
        total = len(retain) * (self.model.padded_rows if erase_padded else 1) + prior_rows
        preserve = self._preserve_rows(sources, rows, pattern, space.dim, total > space.dim)

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
            site_rows=self._site_rows(space, preset.roles),
            **(self._attack_rows(spec, preset, pairs, settings.erase_scale, space.dim) if preset.attack_rows else {}),
        )
        pooled = [self._pooled(space, pairs, retain, settings, preserve_scale) for space in self.model.target.spaces[1:]]
        return EditProgram(
            target=self.model.target,
            requests=tuple(entry.concept for entry in ordered_entries(spec)),
            spaces=(program_space, *pooled),
            phrases=tuple((entry.concept, *entry.synonyms) for entry in ordered_entries(spec)),
        )

    def _erase_rows(self, pairs, rows: "RowRule", padded: bool, scale: float, dim: int, many: bool) -> EraseRows:
        """The erase rows of ``pairs``, encoded ``STREAM`` pairs at a time; with ``many`` rows (more than
        d) and ``fold_erase``, all but each prompt's subject row fold into moments as they arrive."""
        fold = MomentSum(dim, cross=True) if many and self.fold_erase else None
        explicit: list = [None] * len(pairs)  # per pair: (keys, guides, weights, provenance), spec order
        batches = length_batches(pairs, lambda pair: 77 if padded else rows.width(pair[1], pair[2]), self.STREAM)
        last_use = {pairs[i][2]: index for index, batch in enumerate(batches) for i in batch}
        guide_rows: dict[str, np.ndarray] = {}
        for index, batch in enumerate(batches):
            wanted = {pairs[i][1] for i in batch} | {pairs[i][2] for i in batch if pairs[i][2] not in guide_rows}
            encoded = self._encode(sorted(wanted), padded)
            guide_rows.update((pairs[i][2], encoded[pairs[i][2]]) for i in batch if pairs[i][2] not in guide_rows)
            folded = ([], [], [], [])
            for i in batch:
                request, prompt, guide, strength = pairs[i]
                old, new, tokens = rows.select(prompt, guide, encoded[prompt], guide_rows[guide])
                weight = scale * strength
                keep = rows.subject(prompt, tokens) if fold is not None else np.ones(tokens.size, dtype=bool)
                explicit[i] = (
                    old[keep],
                    new[keep],
                    [weight] * int(keep.sum()),
                    [Provenance(request=request, prompt=prompt, token=int(t)) for t in tokens[keep]],
                )
                if not keep.all():
                    folded[0].append(old[~keep])
                    folded[1].append(new[~keep])
                    folded[2].append(np.full(int((~keep).sum()), weight))
                    folded[3].append(prompt)
            if folded[0]:
                fold.add(np.concatenate(folded[0]), np.concatenate(folded[2]), folded[3], np.concatenate(folded[1]))
            for guide in [g for g, used in last_use.items() if used == index]:
                guide_rows.pop(guide, None)
        return EraseRows(
            keys=np.concatenate([part[0] for part in explicit]),
            guides=np.concatenate([part[1] for part in explicit]),
            weights=np.array([w for part in explicit for w in part[2]]),
            provenance=tuple(p for part in explicit for p in part[3]),
            folded=None if fold is None else fold.result(),
        )

    def _site_rows(self, space, roles) -> tuple[SiteRows, ...]:
        """Each edited site's W0 (its key-space columns) in float64, when a pass reads them (SPEED's
        per-layer retain sets, passes/influence_filter.py); otherwise none."""
        if not self.site_weights:
            return ()
        weights = self.model.kv_weights()
        return tuple(
            SiteRows(module_path=site.module_path, weight=np.asarray(weights[site.module_path])[:, : site.in_features])
            for site in space.sites
            if site.role in roles
        )

    def _attack_rows(self, spec: Spec, preset: Preset, pairs, scale: float, dim: int) -> dict:
        """RECE's rounds (passes/rece.py): every erase prompt's 77 padded rows, row r paired with its
        guide's row r (close_form_emb_regzero encodes the whole prompt; edit_model_adversarial pairs
        position by position), and the retain rows at unit weight per listed prompt: ``' '`` once per
        erase prompt (train.py) or ``''`` and the spec's preserve list (train_artists.py, train_object.py)."""
        encoded = self._encode([p for _, p, _, _ in pairs] + [g for _, _, g, _ in pairs], True)
        erase = EraseRows(
            keys=np.concatenate([encoded[prompt] for _, prompt, _, _ in pairs]),
            guides=np.concatenate([encoded[guide] for _, _, guide, _ in pairs]),
            weights=np.concatenate([np.full(encoded[prompt].shape[0], scale * strength) for _, prompt, _, strength in pairs]),
            provenance=tuple(
                Provenance(request=request, prompt=prompt, token=t)
                for request, prompt, _, _ in pairs
                for t in range(encoded[prompt].shape[0])
            ),
        )
        if self.attack_retain == "blank":
            sources = [(" ", " ", float(len(pairs)), "all")]
        else:
            sources = [(p, p, 1.0, "all") for p in retain_prompts(spec, replace(preset, preserve_empty=True))]
        ids = self._ids([source[0] for source in sources])
        rule = RowRule(preset.rows, ids, {prompt: len(tokens) - 2 for prompt, tokens in ids.items()})
        retain = self._preserve_rows(sources, rule, None, dim, 77 * len(sources) > dim)
        return {"attack_sources": erase, "attack_retain": retain}

    def _preserve_rows(self, sources, rows: "RowRule", pattern, dim: int, many: bool) -> PreserveRows:
        """The preserve rows of ``sources`` — (prompt, label, weight per row, which rows count: "all" 77
        padded rows, the "subject" row alone, the "tokens" after BOS, or the "padded" rows after BOS) —
        streamed like ``_erase_rows``;
        with ``many`` rows, each prompt keeps its subject row explicit (all its rows when it names an
        erased phrase) and the rest fold into moments."""
        fold = MomentSum(dim, cross=False) if many and self.fold_preserve else None
        explicit: list = [None] * len(sources)  # per source: (keys, weights, provenance), in order
        padded = ("all", "padded")
        for batch in length_batches(sources, lambda source: 77 if source[3] in padded else rows.width(source[0]), self.STREAM):
            encoded = {
                pad: self._encode(sorted({sources[i][0] for i in batch if (sources[i][3] in padded) == pad}), pad)
                for pad in (False, True)
            }
            folded = ([], [], [])
            for i in batch:
                prompt, label, weight, which = sources[i]
                array = encoded[which in padded][prompt]
                tokens = np.arange(rows.visible(prompt, array.shape[0]))
                if which != "all":
                    tokens = tokens[rows.subject(prompt, tokens)] if which == "subject" else tokens[rows.first_token :]
                keep = np.ones(tokens.size, dtype=bool)
                if fold is not None and not (pattern is not None and pattern.search(prompt)):
                    keep = rows.subject(prompt, tokens)
                explicit[i] = (
                    array[tokens[keep]],
                    [weight] * int(keep.sum()),
                    [Provenance(request="preserve", prompt=label, token=int(t)) for t in tokens[keep]],
                )
                if fold is not None and not keep.all():
                    folded[0].append(array[tokens[~keep]])
                    folded[1].append(np.full(int((~keep).sum()), weight))
                    folded[2].append(label)
            if fold is not None and folded[0]:
                fold.add(np.concatenate(folded[0]), np.concatenate(folded[1]), folded[2])
        return PreserveRows(
            keys=np.concatenate([part[0] for part in explicit]) if explicit else np.zeros((0, dim)),
            weights=np.array([w for part in explicit for w in part[1]], dtype=np.float64),
            provenance=tuple(p for part in explicit for p in part[2]),
            folded=None if fold is None else fold.result(),
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
            site_rows=self._site_rows(space, ("pooled",)),
        )
