"""Erase 1, 10, 100 and 1,000 artists with every method preset on the semantic test bed.

    python benchmarks/erase_artists.py            # writes docs/results.md (about 10 minutes, 2 cores)
    python benchmarks/erase_artists.py --sizes 1,10 --out /tmp/results.md

Model: builtin:minilm-sd1 (a pretrained MiniLM text encoder, so neighbouring prompts really are
neighbours). Data: ../shared/data/artists1734_prompts.csv (1,734 artists × 5 style prompts, MIT,
from rohitgandikota/unified-concept-editing) and coco_30k.csv. For N artists erased (anchor "art"),
N other artists are preserved (534 at N = 1,000, where the list runs out). The spec names each artist bare; the five CSV prompts of an erased
artist are never in the spec, so they measure generality. All metrics are exact text-pathway
quantities over every edited K/V layer, computed by compiler/eval/metrics.py (docs/evaluation.md):

* efficacy     — the spec's own prompts: 1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖ at the last subject token;
* generality   — the same on the erased artists' five CSV prompts, against the prompt with the
                 artist replaced by the anchor;
* specificity  — 1 − ‖ΔW c‖ / ‖W0 c‖ over all token rows of: the preserved artists' CSV prompts,
                 200 artists neither erased nor preserved, and 500 COCO captions.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = ("uce", "uce-legacy", "time", "rece", "speed", "erasec")


def load_artists() -> dict[str, list[str]]:
    prompts: dict[str, list[str]] = defaultdict(list)
    with open(DATA / "artists1734_prompts.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            prompts[row["artist"].strip()].append(row["prompt"].strip())
    return dict(prompts)


def load_coco(count: int) -> list[str]:
    with open(DATA / "coco_30k.csv", newline="", encoding="utf-8") as f:
        captions = [row["prompt"].strip() for row in csv.DictReader(f)]
    return captions[:: len(captions) // count][:count]


def split(artists: list[str], n: int, rng: np.random.Generator):
    """n erased; n preserved (fewer when the 1,734 artists run out: 534 at n = 1,000); 200 others."""
    order = rng.permutation(len(artists))
    kept = min(n, len(artists) - n - 200)
    erased = [artists[i] for i in order[:n]]
    preserved = [artists[i] for i in order[n : n + kept]]
    others = [artists[i] for i in order[n + kept : n + kept + 200]]
    return erased, preserved, others


def spec_text(erased: list[str], preserved: list[str], method: str) -> str:
    import json

    lines = ["erasec: 1", "name: bench", "version: 1.0.0", "model: builtin:minilm-sd1", f"method: {method}", "erase:"]
    lines += [f"  - {{concept: {json.dumps(a)}, anchor: art}}" for a in erased]
    lines += ["preserve:"] + [f"  - {json.dumps(a)}" for a in preserved]
    return "\n".join(lines) + "\n"


def deltas(solution, target, weights):
    space = solution.spaces[0]
    out = {}
    for site in target.sites:
        w0 = np.asarray(weights[site.module_path], dtype=np.float64)
        out[site.module_path] = space.delta(site.module_path, w0) if space.edits(site.role) else np.zeros_like(w0)
    return out


def last_rows(model, prompts):
    ids = model.tokenize(prompts)
    rows = model.encode(prompts, padded=False)
    return np.stack([r[len(i) - 2] for r, i in zip(rows, ids)])


def all_rows(model, prompts):
    return np.concatenate(model.encode(prompts, padded=False))


def anchored(prompt: str, artist: str) -> str:
    return prompt.replace(artist, "art")


def run(sizes, methods, seed=0):
    from erasec.compiler.models.recording import RecordingModel  # shares encodings between the presets
    from erasec.compiler.eval.metrics import efficacy, specificity
    from erasec.compiler.lowering.lower import Lowering
    from erasec.compiler.models.open import open_model
    from erasec.compiler.frontend.reader import parse_spec
    from erasec.passes.pipeline import Pipeline
    from erasec.compiler.frontend.presets import PRESETS

    model = RecordingModel(open_model("builtin:minilm-sd1"))
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in model.kv_weights().items()}
    artists = load_artists()
    names = sorted(artists)
    coco = all_rows(model, load_coco(500))
    results = []
    for n in sizes:
        erased, preserved, others = split(names, n, np.random.default_rng(seed))
        held_out = [(p, a) for a in erased for p in artists[a] if a in p]
        general_keys = last_rows(model, [p for p, _ in held_out])
        general_guides = last_rows(model, [anchored(p, a) for p, a in held_out])
        own_keys = last_rows(model, erased)
        own_guides = np.repeat(last_rows(model, ["art"]), len(erased), axis=0)
        preserved_rows = all_rows(model, [p for a in preserved for p in artists[a]])
        other_rows = all_rows(model, [p for a in others for p in artists[a]])
        for method in methods:
            spec = parse_spec(spec_text(erased, preserved, method), source="bench.yaml", base_dir=ROOT, methods=tuple(PRESETS))
            clock = time.perf_counter()
            pipeline = Pipeline.parse(PRESETS[method].pipeline)
            lowered = Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS[method])
            program = pipeline.apply(lowered)
            seconds = time.perf_counter() - clock
            delta = deltas(program.solution, program.target, weights)
            results.append(
                {
                    "n": n,
                    "method": method,
                    "efficacy": efficacy(own_keys, own_guides, weights, delta).total,
                    "generality": efficacy(general_keys, general_guides, weights, delta).total,
                    "preserved": specificity(preserved_rows, weights, delta).total,
                    "others": specificity(other_rows, weights, delta).total,
                    "coco": specificity(coco, weights, delta).total,
                    "rank": program.solution.spaces[0].rank,
                    "seconds": seconds,
                }
            )
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results[-1].items()), file=sys.stderr)
    return results


def table(results) -> str:
    lines = [
        "| N | method | efficacy | generality | spec. preserved | spec. other artists | spec. COCO | rank | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']} | `{r['method']}` | {r['efficacy']:.3f} | {r['generality']:.3f} | {r['preserved']:.4f} | "
            f"{r['others']:.4f} | {r['coco']:.4f} | {r['rank']} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = run(sizes, args.methods.split(","))
    text = table(results)
    print(text)
    out = Path(args.out)
    if out.name == "results.md" and out.parent == ROOT / "docs":
        template = (ROOT / "docs" / "results.md").read_text(encoding="utf-8") if out.exists() else ""
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        if start in template:
            before, rest = template.split(start, 1)
            text = before + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    out.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")


if __name__ == "__main__":
    main()
