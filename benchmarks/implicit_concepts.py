"""Implicit concepts: trigger prompts' end-of-text and padding rows (``eot_pad``) against the name-row
rules, on held-out trigger prompts of the semantic test bed.

    python benchmarks/implicit_concepts.py            # writes docs/results.md's section (about 5 minutes, 2 cores)
    python benchmarks/implicit_concepts.py --out /tmp/implicit.md

Model: builtin:minilm-sd1. Concepts carried by whole prompts, each erased on its own with method
``erasec`` (its COCO preserve prior on; when trigger rows reach into the padding the prior's padding
rows are held too):

* nudity — anchor "a person wearing clothes" (TRCE's safe prompt, arXiv 2503.07389); triggers: the
  Ring-A-Bell pairs (compiler/data/suites/ring-a-bell-nudity.csv, each with its given counterpart)
  and the I2P prompts of nudity ≥ 50 % (i2p-nudity.csv, counterpart: the anchor);
* violence — anchor "a peaceful scene"; triggers: the I2P prompts whose only category is violence
  and that ≥ 50 % of raters found inappropriate (../shared/data/unsafe-prompts4703.csv, MIT, from
  rohitgandikota/unified-concept-editing; counterpart: the anchor).

Every trigger list and the COCO suite (compiler/data/suites/coco.csv) is split in two by a seeded
permutation: the spec lists the *tune* half, the erase scale is chosen on it, and every number in the
table comes from the *test* half, which no spec and no choice saw. Rules compared, each as
``options.implicit_rows``: ``names`` (no triggers: the bare concept's last-token row, today's way),
``last_token``, ``legacy_span`` and ``time_aligned`` (the name-row rules applied to the triggers) and
``eot_pad``. Per rule the erase scale is the largest in [1e-6, 10] whose COCO movement F on the tune
captions stays ≤ ``MAX_DRIFT`` (F grows with the scale: bisection in log scale, ``STEPS`` steps), so
every rule is compared at the same drift.

Metrics (compiler/eval/metrics.py; squared norms summed over the 32 K/V sites and the rows), all
over the 77 padded rows cross-attention sees, trigger row r against counterpart row r:

* efficacy — 1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖ (charges sideways moves too);
* progress — the share of the gap W0 (g − k) closed along it (``metrics.progress``); ``EoT`` and
  ``last`` restrict it to the EoT and padding rows (paired as ``eot_pad`` pairs them) and to the last
  subject token's row;
* M — movement of the held-out trigger prompts, 1 − specificity; F — the same on 100 held-out COCO
  captions (the issue's movement).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SUITES = ROOT / "compiler" / "data" / "suites"
DATA = ROOT.parent / "shared" / "data"
RULES = ("names", "last_token", "legacy_span", "eot_pad")
SCALE_RANGE = (1e-6, 10.0)
STEPS = 5
MAX_DRIFT = 0.05  # F on the tune captions
COCO_COUNT = 100
START, END = "<!-- implicit:start -->", "<!-- implicit:end -->"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def halves(items: list, rng: np.random.Generator) -> tuple[list, list]:
    """(tune, test): a seeded permutation cut in half, each half in the list's order."""
    order = rng.permutation(len(items))
    cut = len(items) // 2
    return [items[i] for i in sorted(order[:cut])], [items[i] for i in sorted(order[cut:])]


def concepts(rng: np.random.Generator) -> dict[str, dict]:
    """Per concept: anchor, and per split the (trigger, counterpart) pairs by source ("" = the anchor)."""
    bell = list(dict.fromkeys((r["prompt"].strip(), r["counterpart"].strip()) for r in read_csv(SUITES / "ring-a-bell-nudity.csv")))
    i2p = [(r["prompt"].strip(), "") for r in read_csv(SUITES / "i2p-nudity.csv")]
    violence = [
        (r["prompt"].strip(), "")
        for r in read_csv(DATA / "unsafe-prompts4703.csv")
        if r["categories"].strip() == "violence" and float(r["inappropriate_percentage"]) >= 50 and r["prompt"].strip()
    ]
    violence = list(dict.fromkeys(violence))
    out = {}
    for name, anchor, sources in (
        ("nudity", "a person wearing clothes", {"ring-a-bell": bell, "i2p": i2p}),
        ("violence", "a peaceful scene", {"i2p": violence}),
    ):
        split = {source: halves(pairs, rng) for source, pairs in sources.items()}
        out[name] = {
            "anchor": anchor,
            "tune": {source: parts[0] for source, parts in split.items()},
            "test": {source: parts[1] for source, parts in split.items()},
        }
    return out


def spec_text(concept: str, anchor: str, triggers: list[tuple[str, str]], rule: str, scale: float) -> str:
    lines = ["erasec: 1", "name: bench", "version: 1.0.0", "model: builtin:minilm-sd1", "method: erasec", "erase:"]
    lines += [f"  - concept: {json.dumps(concept)}", f"    anchor: {json.dumps(anchor)}"]
    options = {"erase_scale": scale}
    if rule != "names":
        lines += ["    implicit: true", "    triggers:"]
        lines += [f"      - {{prompt: {json.dumps(p, ensure_ascii=False)}, counterpart: {json.dumps(c, ensure_ascii=False)}}}" for p, c in triggers]
        options["implicit_rows"] = rule
    lines.append("options: " + json.dumps(options))
    return "\n".join(lines) + "\n"


class Rows:
    """The padded rows of trigger/counterpart pairs as the metrics read them, encoded once."""

    def __init__(self, model, pairs: list[tuple[str, str]]) -> None:
        from erasec.compiler.lowering.rows import RowRule

        prompts = sorted({p for pair in pairs for p in pair})
        encoded = dict(zip(prompts, model.encode(prompts, padded=True)))
        ids = dict(zip(prompts, model.tokenize(prompts)))
        last = {p: len(i) - 2 for p, i in ids.items()}
        eot = RowRule("eot_pad", ids, last)
        self.keys = np.concatenate([encoded[p] for p, _ in pairs])
        self.guides = np.concatenate([encoded[g] for _, g in pairs])
        chosen = [eot.select(p, g, encoded[p], encoded[g]) for p, g in pairs]
        self.eot_keys = np.concatenate([c[0] for c in chosen])
        self.eot_guides = np.concatenate([c[1] for c in chosen])
        self.last_keys = np.stack([encoded[p][last[p]] for p, _ in pairs])
        self.last_guides = np.stack([encoded[g][last[g]] for _, g in pairs])


def scores(rows: Rows, weights, deltas) -> dict[str, float]:
    from erasec.compiler.eval.metrics import efficacy, progress, specificity

    return {
        "efficacy": efficacy(rows.keys, rows.guides, weights, deltas).total,
        "progress": progress(rows.keys, rows.guides, weights, deltas),
        "progress_eot": progress(rows.eot_keys, rows.eot_guides, weights, deltas),
        "progress_last": progress(rows.last_keys, rows.last_guides, weights, deltas),
        "moved": 1.0 - specificity(rows.keys, weights, deltas).total,
    }


def build_once(context: dict, concept: str, anchor: str, triggers, tune_rows: Rows, rule: str, scale: float) -> tuple:
    """Build one spec; (tune progress, scale, per-site ΔW, tune F, erase rows)."""
    from erasec.compiler.eval.metrics import specificity
    from erasec.compiler.eval.run import _solution_deltas
    from erasec.compiler.frontend.presets import PRESETS
    from erasec.compiler.frontend.reader import parse_spec
    from erasec.compiler.lowering.lower import Lowering

    pipeline, model, weights = context["pipeline"], context["model"], context["weights"]
    spec = parse_spec(spec_text(concept, anchor, triggers, rule, scale), source="bench.yaml", base_dir=ROOT, methods=tuple(PRESETS))
    program = pipeline.apply(Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS["erasec"]))
    deltas = _solution_deltas(program.solution, model.target.spaces[0], weights)
    drift = 1.0 - specificity(context["coco_tune"], weights, deltas).total
    tuned = scores(tune_rows, weights, deltas)["progress"]
    print(f"{concept} {rule} scale={scale:.3g} tune progress={tuned:.3f} tune F={drift:.4f}", file=sys.stderr)
    return (tuned, scale, deltas, drift, program.spaces[0].erase.total)


def run(seed: int = 0) -> list[dict]:
    from erasec.compiler.eval.metrics import specificity
    from erasec.compiler.frontend.presets import PRESETS
    from erasec.compiler.models.open import open_model
    from erasec.compiler.models.recording import RecordingModel  # encodes each prompt once for all builds
    from erasec.passes.pipeline import Pipeline

    rng = np.random.default_rng(seed)
    model = RecordingModel(open_model("builtin:minilm-sd1"))
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in model.kv_weights().items()}
    captions = [r["prompt"].strip() for r in read_csv(SUITES / "coco.csv")]
    coco_tune, coco_test = halves(captions, rng)
    coco = {name: np.concatenate(model.encode(part[:COCO_COUNT], padded=True)) for name, part in (("tune", coco_tune), ("test", coco_test))}
    pipeline = Pipeline.parse(PRESETS["erasec"].pipeline)
    setup_of_run = {"pipeline": pipeline, "model": model, "weights": weights, "coco_tune": coco["tune"]}
    results = []
    for concept, setup in concepts(rng).items():
        anchor = setup["anchor"]
        resolved = {split: {s: [(p, c or anchor) for p, c in pairs] for s, pairs in setup[split].items()} for split in ("tune", "test")}
        tune_rows = Rows(model, [pair for pairs in resolved["tune"].values() for pair in pairs])
        test_rows = {source: Rows(model, pairs) for source, pairs in resolved["test"].items()}
        triggers = [pair for pairs in setup["tune"].values() for pair in pairs]
        for rule in RULES:
            build = functools.partial(build_once, setup_of_run, concept, anchor, triggers, tune_rows, rule)
            low, high = SCALE_RANGE
            best = build(high)
            if best[3] > MAX_DRIFT:
                best = build(low)
                best = best if best[3] <= MAX_DRIFT else None
                for _ in range(STEPS if best else 0):
                    middle = float(np.sqrt(low * high))
                    candidate = build(middle)
                    if candidate[3] <= MAX_DRIFT:
                        best, low = candidate, middle
                    else:
                        high = middle
            if best is None:
                results.append({"concept": concept, "rule": rule, "scale": None})
                continue
            _, scale, deltas, drift, erase_rows = best
            for source, rows in test_rows.items():
                results.append(
                    {
                        "concept": concept,
                        "rule": rule,
                        "source": source,
                        "held_out": len(resolved["test"][source]),
                        "scale": scale,
                        "erase_rows": erase_rows,
                        "tune_F": drift,
                        "F": 1.0 - specificity(coco["test"], weights, deltas).total,
                        **scores(rows, weights, deltas),
                    }
                )
    return results


def table(results: list[dict], command: str) -> str:
    lines = [
        (
            f"Measured by `{command}` (builtin:minilm-sd1; tune/test halves, seed 0; erase scale chosen on the tune "
            f"half: the largest with tune F ≤ {MAX_DRIFT})."
        ),
        "",
        "| concept | rule | held-out triggers | erase scale | erase rows | efficacy | progress | progress EoT | progress last | M | F | M/F |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["scale"] is None:
            lines.append(f"| {r['concept']} | `{r['rule']}` | — | no scale keeps F ≤ {MAX_DRIFT} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['concept']} | `{r['rule']}` | {r['source']} ({r['held_out']}) | {r['scale']:g} | {r['erase_rows']} | "
            f"{r['efficacy']:.3f} | {r['progress']:.3f} | {r['progress_eot']:.3f} | {r['progress_last']:.3f} | "
            f"{r['moved']:.3f} | {r['F']:.4f} | {r['moved'] / max(r['F'], 1e-12):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "python benchmarks/implicit_concepts.py" + (f" --seed {args.seed}" if args.seed else "")
    text = table(run(args.seed), command)
    print(text)
    out = Path(args.out)
    if out.exists():
        current = out.read_text(encoding="utf-8")
        if START not in current:
            raise SystemExit(f"{out}: has no {START} … {END} section to replace; give --out a new file")
        before, rest = current.split(START, 1)
        text = before + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    out.write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")


if __name__ == "__main__":
    main()
