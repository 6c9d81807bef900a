"""What a FLUX/SD3 build costs on a CPU: a T5-XXL-shaped encoder's passes, the float64 moments and the
solve at the T5 width (issue 14 item 7).

    python benchmarks/dit_build.py                    # 1 of T5-XXL's 24 layers, 256 and 512 rows
    python benchmarks/dit_build.py --layers 2 --repeats 2 --prompts 1000

The encoder is ``transformers.T5EncoderModel`` at T5-v1.1-XXL's shapes (d_model 4096, d_ff 10240, 64
heads of 64, gated GELU, 32,128 tokens; research/dit.md §5) with random weights and only
``--layers`` of its 24 layers: one layer (1.3 GB in fp32 with the embedding table) where the
whole encoder (19 GB) could not be passed fast enough to measure. Each block is timed by forward hooks; the per-layer
cost is the mean block time and the rest of the pass (embedding lookup, relative position bias,
final norm) is the pass minus its blocks; **the 24-layer cost is extrapolated** as rest + 24 ×
per-layer, and the output says so. Two ways to encode, as erasec builds (compiler/models/placement.py):

* ``cpu path``: one prompt per pass on one torch thread (the byte-identical default); a build runs
  as many such passes at once as there are usable cores, so N prompts cost N × pass / cores at best;
* ``device path on the cpu`` (``--device cpu --encode-batch B``): B prompts per pass on every core.

Then the float64 work at d = 4096 (``ir.rows.MomentSum``, what the lowering folds every prompt's rows
into; an erase prompt folds three d×d products — its Gram, plain Gram and cross term — a preserve
prompt two), timed on one batch of random rows and scaled to ``--prompts``; and the solve
(``passes/solve.py``'s condition check ``spd_condition`` and ``ConstrainedSolver``, with d
right-hand sides as the folded shared form has) and ``compress``'s eigendecomposition and SVD at
d = 4096. Numbers go to docs/performance.md by hand, with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T5_XXL = {  # google/t5-v1_1-xxl's encoder config (research/dit.md §5)
    "vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
}
FULL_LAYERS = 24
DIM = T5_XXL["d_model"]


def t5_xxl(layers: int):
    """A T5-XXL-shaped encoder of ``layers`` layers, random weights (seed 0), fp32, eval mode."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(num_layers=layers, use_cache=False, **T5_XXL)).eval()


def timed_pass(model, batch: int, rows: int, threads: int, repeats: int) -> dict:
    """Minimum over ``repeats`` of a pass of ``batch`` prompts × ``rows`` ids on ``threads`` torch
    threads: the whole pass, and the mean of its blocks (forward hooks)."""
    import torch

    torch.set_num_threads(threads)
    ids = torch.randint(1, T5_XXL["vocab_size"], (batch, rows), generator=torch.Generator().manual_seed(rows))
    marks: list[float] = []
    hooks = []
    for block in model.encoder.block:
        hooks.append(block.register_forward_pre_hook(lambda module, args: marks.append(time.perf_counter())))
        hooks.append(block.register_forward_hook(lambda module, args, out: marks.append(time.perf_counter())))
    best = None
    try:
        for _ in range(repeats):
            marks.clear()
            start = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=ids)
            total = time.perf_counter() - start
            blocks = [marks[i + 1] - marks[i] for i in range(0, len(marks), 2)]
            if best is None or total < best["pass"]:
                best = {"pass": total, "per_layer": sum(blocks) / len(blocks), "rest": total - sum(blocks)}
    finally:
        for hook in hooks:
            hook.remove()
    return best


def fold_cost(prompts: int, rows: int, repeats: int) -> dict:
    """Seconds per prompt to fold ``rows`` rows into float64 moments at d = 4096 (``MomentSum.add``):
    an erase prompt (with its guide rows) and a preserve prompt, on one batch of ``prompts`` prompts."""
    import numpy as np

    from erasec.ir.rows import MomentSum

    generator = np.random.default_rng(0)
    keys = generator.standard_normal((prompts * rows, DIM))
    guides = generator.standard_normal((prompts * rows, DIM))
    weights = np.ones(prompts * rows)
    names = [f"p{i}" for i in range(prompts)]
    times = {}
    for kind in ("erase", "preserve"):
        best = float("inf")
        for _ in range(repeats):
            fold = MomentSum(DIM, cross=kind == "erase")
            start = time.perf_counter()
            fold.add(keys, weights, names, guides if kind == "erase" else None)
            best = min(best, time.perf_counter() - start)
        times[kind] = best / prompts
    return times


def solve_cost() -> dict:
    """Seconds of the solve's steps at d = 4096 on a random SPD system with d right-hand sides."""
    import numpy as np

    from erasec.ir.linalg import ConstrainedSolver, spd_condition

    generator = np.random.default_rng(0)
    keys = generator.standard_normal((2 * DIM, DIM))
    matrix = keys.T @ keys / keys.shape[0]
    matrix[np.diag_indices(DIM)] += 0.1
    rhs = generator.standard_normal((DIM, DIM))
    times = {}
    start = time.perf_counter()
    spd_condition(matrix)
    times["condition (eigvalsh)"] = time.perf_counter() - start
    start = time.perf_counter()
    solver = ConstrainedSolver.build(matrix, np.zeros((DIM, 0)))
    delta = solver.apply(rhs.T).T
    times["Cholesky + solve"] = time.perf_counter() - start
    start = time.perf_counter()
    np.linalg.eigh(matrix)
    times["compress: eigh"] = time.perf_counter() - start
    start = time.perf_counter()
    np.linalg.svd(delta, full_matrices=False)
    times["compress: svd"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1, help="of T5-XXL's 24 (the rest is extrapolated)")
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 512], help="T5 padding (SD3/schnell 256, FLUX-dev 512)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per pass on the device path")
    parser.add_argument("--prompts", type=int, default=1000, help="N for the extrapolated build")
    parser.add_argument("--repeats", type=int, default=1, help="minimum over this many passes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from erasec.compiler.build_many import cores

    workers = cores()
    model = t5_xxl(args.layers)
    params = sum(p.numel() for p in model.parameters())
    load = os.getloadavg()[0]  # the 2-core VM is shared: say how busy it was
    results = {"machine": f"{workers} cores, torch {torch.__version__}, load average {load:.1f}", "layers_run": args.layers,
               "params_run": params, "prompts": args.prompts, "encode": {}}
    for rows in args.rows:
        for path, batch, threads in (("cpu path", 1, 1), ("device path on the cpu", args.batch, workers)):
            measured = timed_pass(model, batch, rows, threads, args.repeats)
            full = measured["rest"] + FULL_LAYERS * measured["per_layer"]  # extrapolated, per pass
            per_prompt = full / batch
            build = args.prompts * per_prompt / (workers if path == "cpu path" else 1)
            results["encode"][f"{rows} rows, {path}"] = {
                "batch": batch, "threads": threads, "per_layer_s": measured["per_layer"] / batch,
                "rest_s": measured["rest"] / batch, "extrapolated_24_layers_s": per_prompt,
                "extrapolated_build_s": build,
            }
    del model
    fold_rows = max(args.rows)
    fold = fold_cost(2, fold_rows, args.repeats)
    results["moments"] = {"rows": fold_rows, **{f"{k}_s_per_prompt": v for k, v in fold.items()},
                          "erase_build_s": fold["erase"] * args.prompts}
    torch.set_num_threads(workers)
    results["solve"] = solve_cost()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"T5-XXL-shaped encoder, random weights: {args.layers} of 24 layers run ({params / 1e9:.2f} B params), "
          f"{results['machine']}")
    print(f"per-layer cost measured; the 24-layer cost EXTRAPOLATED (rest + 24 × per-layer); N = {args.prompts} prompts")
    print(f"{'':34}{'s/layer/prompt':>15}{'24 layers s/prompt':>20}{'N prompts':>12}")
    for name, row in results["encode"].items():
        build = row["extrapolated_build_s"]
        print(f"{name:34}{row['per_layer_s']:>15.3f}{row['extrapolated_24_layers_s']:>20.1f}"
              f"{build / 3600:>10.1f} h" + ("  (N × pass / cores)" if "cpu path" == name.split(", ")[1] else ""))
    m = results["moments"]
    print(f"float64 moments at d={DIM}, {fold_rows} rows a prompt: erase {m['erase_s_per_prompt']:.2f} s/prompt, "
          f"preserve {m['preserve_s_per_prompt']:.2f} s/prompt; N erase prompts {m['erase_build_s']:.0f} s")
    print("solve at d=4096: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["solve"].items()))


if __name__ == "__main__":
    main()
