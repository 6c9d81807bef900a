"""What a spec asks the lowering to encode: the method's settings, the erase pairs (prompt, guide),
the prompts to retain, the prior's prompt list, and TIME's token alignment (``lower.py`` says how
each method picks its rows)."""

from __future__ import annotations

from dataclasses import dataclass

from erasec.compiler.frontend.presets import Preset

from ..frontend.spec import Spec


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


def trigger_pairs(spec: Spec, preset: Preset) -> list[tuple[str, str, str, float]]:
    """(request, trigger prompt, safe counterpart, strength) for every implicit entry's triggers, in
    spec order; a trigger without a counterpart takes the entry's anchor (the method's blank guide
    when that is empty), the rule docs/spec.md states."""
    pairs = []
    for entry in ordered_entries(spec):
        anchor = entry.anchor if entry.anchor.strip() else preset.blank_guide
        pairs += [(entry.concept, prompt, counterpart or anchor, entry.strength) for prompt, counterpart in entry.triggers]
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
