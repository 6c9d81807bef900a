"""What byte-identical encoding costs: the rows of 300 COCO captions through SD1.5's CLIP-L, batched
as builds encoded before issue 16 item 9, against the way a build encodes now.

    python benchmarks/encode_cost.py                   # SD1.5 (CLIP-L, random fp16 weights), 3 rounds
    python benchmarks/encode_cost.py --prompts 100 --rounds 1

The model is ``benchmarks/memory_families.py``'s full-size random SD1.5 folder in ``--scratch``
(written once, reused). Three ways, each timed in alternation so that a busy machine slows them alike
(minimum of ``--rounds``):

* ``batched``: ``SDModel.encode`` on every caption at once (batches of similar token length) with
  torch on all usable cores — the rows then depend on the batch a prompt lands in and on the thread
  count (docs/performance.md, "Determinism and its cost");
* ``one pass each, 1 thread``: one prompt per encoder pass, one worker;
* ``one pass each, N workers`` (what a build does, ``CachingModel`` without a cache): one prompt per
  pass on one torch thread, on as many Python worker threads as usable cores.

It also checks that the last two give the same bits. Nothing is written to the docs: copy the
printed lines, with the machine, into docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default="/tmp/erasec-bench", type=Path)
    parser.add_argument("--prompts", default=300, type=int, help="COCO captions of the shipped prior")
    parser.add_argument("--rounds", default=3, type=int)
    args = parser.parse_args()

    from memory_families import write_model

    write_model("sd15", args.scratch / "sd15")

    import numpy as np
    import torch

    from erasec.compiler.build_many import cores
    from erasec.compiler.models.embedding_cache import CachingModel
    from erasec.compiler.lowering.prompts import prior_prompts
    from erasec.compiler.models.open import open_model

    prompts = prior_prompts("coco")[: args.prompts]
    workers = cores()
    model = open_model(str(args.scratch / "sd15"))

    def batched():
        torch.set_num_threads(workers)
        return model.encode(prompts, padded=False)

    def per_pass(threads: int):
        def run():
            torch.set_num_threads(threads)  # CachingModel runs one worker per torch thread the process has
            return CachingModel(model, None).encode(prompts, padded=False)

        return run

    ways = {"batched": batched, "one pass each, 1 thread": per_pass(1), f"one pass each, {workers} workers": per_pass(workers)}
    model.encode(prompts[:4], padded=False)  # load the encoder and tokenizer once, outside the timings
    CachingModel(model, None).encode(prompts[:4], padded=False)
    seconds = {name: [] for name in ways}
    rows = {}
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            rows[name] = way()
            seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"{name:<28} min {min(values):6.2f} s   runs {', '.join(f'{v:.2f}' for v in values)}")
    one, many = rows["one pass each, 1 thread"], rows[f"one pass each, {workers} workers"]
    same = all(np.array_equal(a, b) for a, b in zip(one, many))
    print(f"{len(prompts)} prompts, {workers} usable cores, torch {torch.__version__}; "
          f"one-pass rows identical on 1 and {workers} workers: {same}")


if __name__ == "__main__":
    main()
