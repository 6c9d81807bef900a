"""The build's warning when a concept is erased far less than its method normally erases it.

A build always succeeds, so a spec that erases almost nothing (the README's old example on
``builtin:tiny-sd1``: efficacy 0.17–0.28 with the default method) said nothing. Each method's
normal efficacy is the lowest it reached on the semantic test bed (``builtin:minilm-sd1``, a
pretrained encoder) for 1 to 1,000 artists in docs/results.md; a concept below half of it warns.
Half, because no method came near it there at any N (each row is at or above its floor), while
examples/quickstart.yaml (2026-12-05, efficacy of Van Gogh, builtin:tiny-sd1 → builtin:minilm-sd1)
measured erasec 0.19 → 0.84 (floor/2 = 0.41: the random encoder warns, the semantic one does not),
uce 0.90 → 0.97, speed 0.23 → 0.28 (neither warns). ``time`` and ``speed`` move K/V little by
design (floors 0.061 and 0.021), so they warn only when they do not erase at all. The floor 0.705
in docs/results.md was measured with the joint variant, now ``rece-joint``; ``rece`` as published
(issue 17) has no measured floor yet and never warns: its rounds re-erase attack embeddings from
the current weights and move the concept's own rows away from the anchor (the quickstart's Van
Gogh measured −0.40 on tiny-sd1 and −2.12 on minilm-sd1), which this score reads as "not erased".

The reference holds for the method as published, so a spec that changes its balance
(``lambda``, ``erase_scale``, ``preserve_scale``, ``prior_scale``, ``pipeline``) or erases at
``strength`` below 1 is compared with the floor times that strength, or not at all.
"""

from __future__ import annotations

# the lowest efficacy over N = 1, 10, 100, 1000 in docs/results.md (builtin:minilm-sd1)
NORMAL_EFFICACY = {"erasec": 0.844, "uce": 0.667, "uce-legacy": 0.735, "rece-joint": 0.705, "time": 0.061, "speed": 0.021}
FAR_BELOW = 0.5  # warn below this fraction of the method's normal efficacy

_RANDOM_ENCODERS = ("builtin:tiny-sd1", "builtin:tiny-sd2", "builtin:tiny-sdxl")


def low_efficacy_warning(spec, scores) -> tuple[str, ...]:
    """A one-line ``warning [efficacy] …`` diagnostic, or none."""
    normal = NORMAL_EFFICACY.get(spec.method)
    options = spec.options
    changed = (options.lam, options.erase_scale, options.preserve_scale, options.prior_scale, options.pipeline)
    if normal is None or any(value is not None for value in changed) or scores is None:
        return ()
    strength = {entry.concept: entry.strength for entry in spec.erase}
    low = [r for r in scores.requests if r.efficacy < FAR_BELOW * normal * strength.get(r.request, 1.0)]
    if not low:
        return ()
    worst = min(low, key=lambda r: (r.efficacy, r.request))
    what = (
        f"efficacy {worst.efficacy:.2f} ({worst.request!r}{f' and {len(low) - 1} more' if len(low) > 1 else ''}) is far "
        f"below what {spec.method} normally reaches ({normal:.2f} or more on builtin:minilm-sd1, docs/results.md)"
    )
    if spec.model and spec.model.removesuffix(".safetensors") in _RANDOM_ENCODERS:
        why = f"{spec.model} has a random-weight text encoder, so prompts have no meaning; use builtin:minilm-sd1 or a real model"
    else:
        why = ("likely the anchor is too close to the concept, preserved prompts say nearly the same thing, or the "
               "method does not suit this spec (docs/results.md compares them)")
    return (f"warning [efficacy] {what}: {why}",)
