"""A FLUX-scale build's encoding on a GPU: the full T5-XXL-shaped encoder (24 layers, random weights)
over N prompts at the T5 padding, fp32 (TF32 off) and bf16, through erasec's device path (issue 14
item 7). Prepared for a GPU machine; this team had none, so it has not run on one.

    python benchmarks/dit_gpu.py                          # N=1000 prompts at 512 rows, fp32 and bf16
    python benchmarks/dit_gpu.py --prompts 200 --rows 256 --batch 64
    python benchmarks/dit_gpu.py --device cpu --layers 1 --prompts 4 --rows 16 --batch 2   # a dry run

It builds ``transformers.T5EncoderModel`` at T5-v1.1-XXL's shapes (``dit_build.py``'s config) on the
device in fp32 (19 GB), wraps it as a build does (``Placement(kind, dtype, batch).place``: the
encoder cast to ``dtype``, TF32 off while it runs, rows back to the host in fp32) and times, per
dtype, after one warm-up batch:

* ``encode``: N prompts in passes of ``--batch`` (random ids, every pass one shape, as a build's),
  rows on the host;
* ``fold``: ``ir.rows.MomentSum`` folding those rows into float64 moments on the host, as the
  lowering does (timed on ``--fold-prompts`` of them and scaled to N: the host's float64 GEMMs are
  the slow part), beside the same Gram formed in float64 on the device (the rows copied back up
  first, which a fold on the device would not need), with their relative
  difference (the condition for folding there instead);
* the rows' relative difference bf16 vs fp32, and TF32 on vs off (why it is off), on one batch.

It prints a table (and ``--json``). The fp32 model is cast to bf16 in place after the fp32 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dit_build import T5_XXL  # the same encoder shapes as the CPU benchmark


def _ids(batch: int, rows: int, seed: int):
    import torch

    return torch.randint(1, T5_XXL["vocab_size"], (batch, rows), generator=torch.Generator().manual_seed(seed))


def _relative(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max())


def run(args) -> dict:
    import numpy as np
    import torch
    from transformers import T5Config, T5EncoderModel

    from erasec.compiler.models.placement import Placement, full_fp32_matmuls
    from erasec.ir.rows import MomentSum

    device = args.device
    torch.manual_seed(0)
    with torch.device(device):
        model = T5EncoderModel(T5Config(num_layers=args.layers, use_cache=False, **T5_XXL)).eval()
    if device == "cuda":
        torch.cuda.synchronize()
    passes = -(-args.prompts // args.batch)
    probe = _ids(args.batch, args.rows, seed=12345)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "layers": args.layers, "prompts": args.prompts, "rows": args.rows, "batch": args.batch, "runs": {}}
    with torch.inference_mode():
        raw = model.to(device)
        with full_fp32_matmuls():
            reference = raw(input_ids=probe.to(device))[0].float().cpu()
        if device == "cuda":  # TF32 on, to show what turning it off buys
            saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            results["tf32_rows_rel_diff"] = _relative(reference, raw(input_ids=probe.to(device))[0].float().cpu())
            torch.backends.cuda.matmul.allow_tf32 = saved
        for dtype in args.dtypes:
            encoder = Placement(kind=device, dtype=dtype, batch=args.batch).place(model)
            rows = encoder(input_ids=probe)[0]  # warm-up, and the probe's rows in this dtype
            if dtype != "fp32":
                results[f"{dtype}_rows_rel_diff"] = _relative(reference, rows)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fold = MomentSum(T5_XXL["d_model"], cross=False)
            gram = torch.zeros((T5_XXL["d_model"],) * 2, dtype=torch.float64, device=device)
            kept, encode_s, fold_s, device_fold_s = 0, 0.0, 0.0, 0.0
            for index in range(passes):
                start = time.perf_counter()
                states = encoder(input_ids=_ids(args.batch, args.rows, seed=index))[0]
                encode_s += time.perf_counter() - start
                if kept < args.fold_prompts:
                    keys = states.reshape(-1, states.shape[-1]).double().numpy()
                    start = time.perf_counter()
                    fold.add(keys, np.ones(keys.shape[0]), [str(index)])
                    fold_s += time.perf_counter() - start
                    start = time.perf_counter()
                    on_device = states.reshape(-1, states.shape[-1]).to(device, torch.float64)
                    gram += on_device.T @ on_device
                    if device == "cuda":
                        torch.cuda.synchronize()
                    device_fold_s += time.perf_counter() - start
                    kept += args.batch
            host = fold.result().plain
            scale = args.prompts / kept
            results["runs"][dtype] = {
                "encode_s": encode_s, "prompts_per_s": passes * args.batch / encode_s,
                "host_fold_s": fold_s * scale, "device_fold_s": device_fold_s * scale,
                "device_vs_host_gram_rel_diff": float(np.abs(gram.cpu().numpy() - host).max() / np.abs(host).max()),
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=512, help="T5 padding: FLUX-dev 512, SD3/schnell 256")
    parser.add_argument("--batch", type=int, default=32, help="prompts per pass (erasec's default on CUDA)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--layers", type=int, default=24, help="T5-XXL has 24")
    parser.add_argument("--fold-prompts", type=int, default=64, help="prompts folded on the host, scaled to N")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"dit_gpu.py: torch {torch.__version__} sees no CUDA device; run it on a GPU machine "
              "(or --device cpu for a dry run)", file=sys.stderr)
        sys.exit(2)
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['device']}, torch {results['torch']}: T5-XXL-shaped encoder, {args.layers} layers, random "
          f"weights; {args.prompts} prompts × {args.rows} rows, {args.batch} a pass")
    print(f"{'dtype':6}{'encode s':>10}{'prompts/s':>11}{'host fold s':>13}{'device fold s':>15}{'fold Δ':>9}"
          f"{'peak GiB':>10}")
    for dtype, run_ in results["runs"].items():
        peak = run_["peak_gpu_gib"]
        print(f"{dtype:6}{run_['encode_s']:>10.1f}{run_['prompts_per_s']:>11.1f}{run_['host_fold_s']:>13.1f}"
              f"{run_['device_fold_s']:>15.2f}{run_['device_vs_host_gram_rel_diff']:>9.1e}"
              f"{'' if peak is None else f'{peak:.1f}':>10}")
    print(f"folds: {args.fold_prompts} prompts timed, scaled to {args.prompts}; rows bf16 vs fp32: "
          f"{results.get('bf16_rows_rel_diff', float('nan')):.1e}; TF32 on vs off: "
          f"{results.get('tf32_rows_rel_diff', float('nan')):.1e} (relative, max over one batch)")


if __name__ == "__main__":
    main()
