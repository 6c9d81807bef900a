"""Quick check of neighbour mining (issue 15 deliverable 1) on builtin:minilm-sd1, tuning split only.

    python benchmarks/neighbors_quick.py                 # 12 concepts of mixed kinds, jointly; ~1 min
    python benchmarks/neighbors_quick.py --count 8 --weight 4

Erases 12 concepts of benchmarks/data/selective/concepts.yaml (every 10th, so every kind shows) with
the `erasec` method, once as it is and once with `options.neighbors` (the built-in vocabulary), and
prints issue 15's movements on the **tune** split: U = mean movement of the paraphrases, N = of the
neighbour prompts, C = of the bare concept, over all 77 rows, ‖ΔW c‖ over every edited site relative
to ‖W0 c‖. The full held-out benchmark (both splits, every preset) is benchmarks/selective.py's job.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def movement(model, program, solution, prompts: list[str]) -> float:
    space, solved = program.spaces[0], solution.spaces[0]
    delta = solved.left @ solved.right.T  # T − I: ΔW_l = W0_l (T − I) at every site
    values = []
    for rows in model.encode(prompts, padded=True):
        moved = rows @ delta.T
        values.append(np.sqrt(np.einsum("ij,jk,ik->", moved, space.site_gram, moved) / np.einsum("ij,jk,ik->", rows, space.site_gram, rows)))
    return float(np.mean(values))


def main() -> None:
    from erasec.compiler.frontend.methods import pipeline_text
    from erasec.compiler.frontend.presets import PRESETS
    from erasec.compiler.frontend.reader import parse_spec
    from erasec.compiler.lowering.lower import Lowering
    from erasec.compiler.models.embedding_cache import CachingModel, EmbeddingCache
    from erasec.compiler.models.open import open_model
    from erasec.passes.pipeline import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=10, help="erase every Nth concept of the data set")
    args = parser.parse_args()
    concepts = yaml.safe_load((ROOT / "benchmarks" / "data" / "selective" / "concepts.yaml").read_text())[:: args.every]
    model = CachingModel(open_model("builtin:minilm-sd1"), EmbeddingCache.at(None))
    erase = [{"concept": c["concept"], "anchor": ""} for c in concepts]
    paraphrases = [p for c in concepts for p in c["tune"]["paraphrases"]]
    neighbours = [p for c in concepts for p in c["tune"]["neighbours"].values()]
    bare = [c["concept"] for c in concepts]
    for label, options in (("erasec", {}), (f"erasec + neighbors{{count={args.count} weight={args.weight:g}}}", {"neighbors": {"count": args.count, "weight": args.weight}})):
        text = json.dumps({"erasec": 1, "name": "quick", "version": "1.0.0", "model": "builtin:minilm-sd1", "method": "erasec", "erase": erase, "options": options})
        spec = parse_spec(text, source="quick", base_dir=None, methods=tuple(PRESETS))
        pipeline = Pipeline.parse(pipeline_text(spec))
        lowered = Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS[spec.method])
        solution = pipeline.apply(lowered).solution
        c, u, n = (movement(model, lowered, solution, prompts) for prompts in (bare, paraphrases, neighbours))
        print(f"{label}: {len(concepts)} concepts  C {c:.3f}  U {u:.3f}  N {n:.3f}  U/C {u / c:.2f}  U/N {u / n:.2f}")


if __name__ == "__main__":
    main()
