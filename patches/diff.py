"""``erasec diff A B``: what changed between two versions of a patch, and whether the version says so.

Semantic versioning (semver.org 2.0.0) read for erasure patches:

* **major** — a user of the old version can be surprised in the unsafe direction or can no longer
  load it: a concept is no longer erased (removed), or the base model changed (the pin differs,
  so the patch no longer applies to the old base);
* **minor** — more is erased (a concept added) or an erased concept changed (anchor, synonyms,
  templates, strength);
* **patch** — only what is preserved, the solver options, the pipeline or the output changed.

The bump B's version makes over A's must be at least the one its changes need. Pre-release
tags and build metadata are ignored; a 0.x version is held to the same rule.
"""

from __future__ import annotations

import re

from .pin import pins_match
from .read import PatchFile

_LEVELS = ("none", "patch", "minor", "major")
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_ENTRY_KEYS = ("anchor", "synonyms", "templates", "strength")


def semver_core(version: str) -> tuple[int, int, int] | None:
    match = _SEMVER.match(version)
    return None if match is None else tuple(int(n) for n in match.groups())


def version_bump(old: str, new: str) -> str:
    """``none``, ``patch``, ``minor``, ``major``, ``downgrade`` or ``invalid``."""
    a, b = semver_core(old), semver_core(new)
    if a is None or b is None:
        return "invalid"
    if b < a:
        return "downgrade"
    if b[0] > a[0]:
        return "major"
    if b[1] > a[1]:
        return "minor"
    if b[2] > a[2]:
        return "patch"
    return "none"


def _concepts(spec: dict) -> dict[str, dict]:
    return {entry["concept"].casefold(): entry for entry in spec.get("erase", [])}


def _changed_settings(old: dict, new: dict, prefix: str) -> list[dict]:
    return [
        {"key": f"{prefix}.{key}", "old": old.get(key), "new": new.get(key)}
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def diff_patches(old: PatchFile, new: PatchFile) -> dict:
    """The changes from ``old`` to ``new`` and the version check, as JSON-able data."""
    spec_a, spec_b = old.spec, new.spec
    concepts_a, concepts_b = _concepts(spec_a), _concepts(spec_b)
    added = [concepts_b[k]["concept"] for k in concepts_b if k not in concepts_a]
    removed = [concepts_a[k]["concept"] for k in concepts_a if k not in concepts_b]
    changed = []
    for key in concepts_a:
        if key in concepts_b:
            fields = [f for f in _ENTRY_KEYS if concepts_a[key].get(f) != concepts_b[key].get(f)]
            if fields:
                changed.append({"concept": concepts_b[key]["concept"], "fields": fields})
    preserve_a = {p.casefold(): p for p in spec_a.get("preserve", [])}
    preserve_b = {p.casefold(): p for p in spec_b.get("preserve", [])}
    options = []
    if spec_a.get("method") != spec_b.get("method"):
        options.append({"key": "method", "old": spec_a.get("method"), "new": spec_b.get("method")})
    options += _changed_settings(spec_a.get("options", {}), spec_b.get("options", {}), "options")
    options += _changed_settings(spec_a.get("output", {}), spec_b.get("output", {}), "output")
    if old.metadata.get("erasec.pipeline") != new.metadata.get("erasec.pipeline"):
        options.append(
            {"key": "pipeline", "old": old.metadata.get("erasec.pipeline"), "new": new.metadata.get("erasec.pipeline")}
        )
    said = any(option["key"] == "options.sequence_length" for option in options)
    if old.sequence_length != new.sequence_length and not said:  # a DiT's T5 padding, recorded when defaulted too
        options.append({"key": "sequence_length (T5 padding)", "old": old.sequence_length, "new": new.sequence_length})
    base_a, base_b = old.base, new.base
    base_changed = base_a.get("family") != base_b.get("family") or not pins_match(base_a, base_b)

    reasons = []
    if removed:
        reasons.append(("major", f"concept removed: {', '.join(removed)}"))
    if base_changed:
        reasons.append(("major", "base model changed"))
    if added:
        reasons.append(("minor", f"concept added: {', '.join(added)}"))
    if changed:
        reasons.append(("minor", f"concept changed: {', '.join(c['concept'] for c in changed)}"))
    preserve_added = [preserve_b[k] for k in preserve_b if k not in preserve_a]
    preserve_removed = [preserve_a[k] for k in preserve_a if k not in preserve_b]
    if preserve_added or preserve_removed or options:
        reasons.append(("patch", "preserve list, options or pipeline changed"))
    if old.data_sha256 != new.data_sha256 and not reasons:
        reasons.append(("patch", "the weights changed"))
    required = max((level for level, _ in reasons), key=_LEVELS.index, default="none")
    bump = version_bump(old.version, new.version)
    if bump in ("invalid", "downgrade"):
        matches = False
    else:
        matches = _LEVELS.index(bump) >= _LEVELS.index(required) and (bump != "none" or required == "none")
    return {
        "old": {"file": str(old.path), "name": old.name, "version": old.version},
        "new": {"file": str(new.path), "name": new.name, "version": new.version},
        "concepts": {"added": added, "removed": removed, "changed": changed},
        "preserve": {"added": preserve_added, "removed": preserve_removed},
        "options": options,
        "base_changed": base_changed,
        "weights_changed": old.data_sha256 != new.data_sha256,
        "version": {
            "bump": bump,
            "required": required,
            "reasons": [text for _, text in reasons],
            "matches": matches,
        },
    }


def render(result: dict) -> str:
    old, new, version = result["old"], result["new"], result["version"]
    lines = [f"{old['name']} {old['version']} → {new['name']} {new['version']}"]
    concepts = result["concepts"]
    for concept in concepts["added"]:
        lines.append(f"  + erase    {concept}")
    for concept in concepts["removed"]:
        lines.append(f"  - erase    {concept}")
    for change in concepts["changed"]:
        lines.append(f"  ~ erase    {change['concept']} ({', '.join(change['fields'])})")
    for prompt in result["preserve"]["added"]:
        lines.append(f"  + preserve {prompt}")
    for prompt in result["preserve"]["removed"]:
        lines.append(f"  - preserve {prompt}")
    for option in result["options"]:
        lines.append(f"  ~ {option['key']}: {option['old']!r} → {option['new']!r}")
    if result["base_changed"]:
        lines.append("  ! base model changed")
    if len(lines) == 1:
        lines.append("  no changes" + (" (but the weights differ)" if result["weights_changed"] else ""))
    verdict = "matches" if version["matches"] else "does NOT match"
    lines.append(f"  version bump {version['bump']}; the changes need {version['required']}: {verdict}")
    return "\n".join(lines)
