"""``erasec inspect``: what a patch erases and keeps, what it was built against, and how big it is.

Everything comes from the header (docs/patch-format.md); no model is opened. ``read_patch`` has
checked that the tensors are exactly the declared modules, so ``modules`` is everything a LoRA loader
would apply: each module's tensor name, rank and ΔW shape.
"""

from __future__ import annotations

from .read import PatchFile


def describe(patch: PatchFile) -> dict:
    """The patch's facts as plain JSON-able data (``--json`` prints exactly this)."""
    spec, base, spaces = patch.spec, patch.base, patch.spaces
    encoder = base.get("text_encoder")
    dropped = list((patch.report or {}).get("dropped_preserve", []))
    return {
        "file": str(patch.path),
        "name": patch.name,
        "version": patch.version,
        "format": patch.metadata.get("erasec.format"),
        "compiler": patch.metadata.get("erasec.compiler"),
        "method": spec.get("method"),
        "pipeline": patch.metadata.get("erasec.pipeline"),
        "erase": [
            {key: entry.get(key) for key in ("concept", "anchor", "synonyms", "templates", "strength")}
            for entry in spec.get("erase", [])
        ],
        # what the patch was solved to keep: filter-preserve's drops (they name an erased concept) apart
        "preserve": [prompt for prompt in spec.get("preserve", []) if prompt not in dropped],
        "dropped_preserve": dropped,
        "options": spec.get("options", {}),
        "base": {
            "family": base.get("family"),
            "model": base.get("model"),
            "tensors": base.get("tensors"),
            "dtype": base.get("dtype"),
            "sha256": base.get("sha256"),
            "sha256_fp16": base.get("sha256_fp16"),
            "text_encoder_sha256": None if not encoder else encoder.get("sha256"),
            "sequence_length": patch.sequence_length,  # a DiT's T5 padding (None: SD)
            # Wan 2.2: the expert the patch edits (transformer/ or transformer_2/); absent for one denoiser
            **({"component": base["component"]} if base.get("component") else {}),
        },
        "rank": patch.rank,
        "spaces": [
            {"space": s.get("space"), "form": s.get("form"), "rank": s.get("rank"), "layers": len(s.get("layers", []))}
            for s in spaces
        ],
        "layers": sorted(layer for s in spaces for layer in s.get("layers", [])),
        "modules": [
            {"layer": m.layer, "tensor": m.prefix, "space": m.space, "rank": m.rank, "shape": [m.out_features, m.in_features]}
            for m in patch.modules
        ],
        "dtype": patch.dtype,
        "size_bytes": patch.size,
        "sha256": patch.data_sha256,
        "report": patch.report,
        "retargetable": "erasec.shared" in patch.metadata,
        "linked": "erasec.link" in patch.metadata,
        "derived_from": patch.json("erasec.derived_from") if "erasec.derived_from" in patch.metadata else None,
    }


def drift_lines(drift: dict) -> list[str]:
    """Where ``options.max_drift`` landed, per key space (``erasec.report.drift``, docs/patch-format.md):
    ``erasec inspect``'s lines and the build summary's, so a budget that weakened the erasure says so."""
    lines = []
    for space, landed in sorted(drift.items()):
        how = (
            f"binds: erase weights × {landed['scale']:.3g}, efficacy {landed['efficacy']:.3f} "
            f"({landed['full_efficacy']:.3f} and drift {landed['full_drift']:.4f} at the spec's strength)"
            if landed["binding"]
            else f"within budget at the spec's strength (efficacy {landed['efficacy']:.3f})"
        )
        lines.append(
            f"  drift budget {landed['max_drift']:g} ({space}, {landed['preserve_rows']} preserve rows): "
            f"drift {landed['drift']:.4f}; {how}"
        )
    return lines


def render(facts: dict) -> str:
    """The human-readable form of ``describe``'s facts."""
    base = facts["base"]
    report = facts["report"] or {}
    efficacy = report.get("efficacy", {})
    lines = [
        f"{facts['name']} {facts['version']}  ({facts['file']}, {facts['size_bytes']} bytes, {facts['dtype']})",
        f"  method    {facts['method']}   pipeline {facts['pipeline']}",
        f"  compiler  erasec {facts['compiler']}, patch format {facts['format']}",
        f"  base      {base['model']} ({base['family']}), {base['tensors']} tensors stored as {base['dtype']}",
        f"            sha256 {base['sha256']}",
        f"            sha256 (fp16-rounded) {base['sha256_fp16']}",
        f"            text encoder {base['text_encoder_sha256'] or '(not pinned)'}",
        *([f"            T5 padding {base['sequence_length']} rows per prompt (built at; load it where the runtime "
             "pads the same, docs/models.md)"] if base.get("sequence_length") is not None else []),
        *([f"            expert {base['component']}/ (load it into that transformer only; docs/models.md)"]
          if base.get("component") else []),
        f"  rank      {facts['rank']} in each of {len(facts['layers'])} layers  "
        + ", ".join(f"{s['space']}: {s['form']}" for s in facts["spaces"]),
        f"  sha256    {facts['sha256']} (tensor bytes; A1111 shows {facts['sha256'][:12]})",
        f"  links     retarget {'yes' if facts['retargetable'] else 'no'}, "
        f"compose {'yes' if facts['linked'] else 'no (built without output.link)'}",
        "",
        "  erases                               anchor             efficacy",
    ]
    for entry in facts["erase"]:
        score = efficacy.get(entry["concept"])
        shown = "" if score is None else f"{score:.4f}"
        anchor = entry["anchor"] or '""'
        lines.append(f"  {entry['concept'][:36]:<36} {anchor[:18]:<18} {shown:>8}")
        if entry["synonyms"]:
            lines.append(f"    also: {', '.join(entry['synonyms'])}")
    preserve = facts["preserve"]
    shown = ", ".join(preserve[:8]) + (f", … ({len(preserve)} in all)" if len(preserve) > 8 else "")
    lines.append(f"  keeps     {shown or '(nothing listed)'}")
    if facts["dropped_preserve"]:
        dropped = ", ".join(facts["dropped_preserve"])
        lines.append(f"  dropped   {dropped} (names an erased concept; not solved for)")
    if report.get("specificity") is not None:
        lines.append(f"  specificity {report['specificity']:.4f} over {report.get('preserve_rows')} preserved rows")
    lines.extend(drift_lines(report.get("drift") or {}))
    if facts["derived_from"]:
        lines.append(f"  derived   {facts['derived_from']}")
    lines.append(f"  modules   {len(facts['modules'])} (all a loader applies: ΔW = up @ down, alpha = rank)")
    lines += [f"    {m['tensor']}  rank {m['rank']}  ΔW {m['shape'][0]}×{m['shape'][1]}" for m in facts["modules"]]
    return "\n".join(lines)
