"""ONNX backend on a GPU: parity with the CUDA execution provider, then timings (issue 6, item 5).

    pip install torch==2.13.0 && pip install ".[gpu]"        # onnxruntime-gpu instead of onnxruntime
    python benchmarks/onnx_gpu.py --out /tmp/onnx-gpu          # about 5 minutes on one H100 (estimate)
    python benchmarks/onnx_gpu.py --cpu-smoke --runs 2         # checks this script on a CPU (small UNet)

Needs onnxruntime-gpu (1.31.1: a 256 MB wheel for CUDA 13 / cuDNN 9, research/ecosystem.md §4.6),
diffusers and erasec importable (run from the repository root).

1. Parity on ``builtin:tiny-sd1`` (fp32): the quickstart patch (``examples/quickstart.yaml``) is built, the UNet exported with both
   exporters, patched in the three modes (bake, switchable, adapter) and run with the CUDA
   execution provider (TF32 off); each output is compared with diffusers' ``load_lora_weights`` +
   ``fuse_lora(1.0)`` on CPU. Bound: max |difference| ≤ 1e-4. ``erase_scale = 0`` and the adapter
   left inactive are compared with the unpatched graph.
2. Timings on an SD1.5-shaped UNet (diffusers' SD1.5 configuration, 859.5M parameters, random
   weights, fp32 — so its graph is over 2 GB and is written with external data): legacy export,
   then a rank-8 shared-map delta on all 32 attn2 to_k/to_v sites (confirmed against the torch
   weights), graphs unpatched / baked / switchable (erase_scale 1 and 0) / adapter. Each is one
   UNet evaluation at batch 2 (classifier-free guidance), 64×64 latents, 77 tokens, fed from
   numpy (host↔device copies included, as ``OnnxStableDiffusionPipeline`` does), ``--warmup``
   runs, then the median and spread of ``--runs`` runs. TensorRT is timed too when ORT offers it.

Output: a Markdown table on stdout and ``OUT/onnx_gpu.json``; copy the table into
docs/performance.md with the card named (``nvidia-smi --query-gpu=name --format=csv``).
Exit status 1 if a parity check fails, 2 if no CUDA execution provider is available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from erasec.compiler.models.unet_configs import SD15_UNET  # diffusers' SD1.5 UNet configuration

PARITY = 1e-4
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"  # built against builtin:tiny-sd1 here (32-d CLIP states)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def session(path, providers, ort):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


CPU_SMOKE = False  # --cpu-smoke: run every step on the CPU provider (a check of this script, not a result)
SMOKE_UNET = {**SD15_UNET, "block_out_channels": (32, 32, 64, 64), "attention_head_dim": 2, "norm_num_groups": 8}


def cuda_providers(ort):
    if CPU_SMOKE:
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]


def run(sess, feeds, ort, *, adapter=None, erase_scale=None):
    feeds = dict(feeds)
    if erase_scale is not None:
        feeds["erase_scale"] = np.array([erase_scale], np.float32)
    options = None
    if adapter is not None:
        lora = ort.LoraAdapter()
        lora.Load(str(adapter))
        options = ort.RunOptions()
        options.add_active_adapter(lora)
    return sess.run(None, feeds, run_options=options)[0]


def parity(work: Path, ort) -> list[dict]:
    import torch
    from diffusers import StableDiffusionPipeline

    from erasec.compiler.build import BuildOptions, build
    from erasec.compiler.models.builtin import builtin_model_path
    from erasec.backends.onnx.apply import apply_onnx
    from erasec.compiler.onnx_graphs.export import ExportOptions
    from erasec.compiler.onnx_graphs.export_model import export_onnx

    patch = work / "patch.safetensors"
    build(QUICKSTART, patch, BuildOptions(model="builtin:tiny-sd1"))
    graphs = {
        "legacy": export_onnx("builtin:tiny-sd1", work / "legacy", ExportOptions(exporter="legacy", components=("unet",))),
        "dynamo": export_onnx(
            "builtin:tiny-sd1", work / "dynamo", ExportOptions(exporter="dynamo", dynamic=False, components=("unet",))
        ),
    }
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([500.0]), torch.randn(2, 77, 32, generator=generator))
    pipe = StableDiffusionPipeline.from_pretrained(
        builtin_model_path("tiny-sd1"), safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    with torch.no_grad():
        pipe.load_lora_weights(str(work), weight_name=patch.name)
        pipe.fuse_lora(lora_scale=1.0)
        fused = pipe.unet(*inputs).sample.numpy()
    feeds = dict(zip(("sample", "timestep", "encoder_hidden_states"), (t.numpy() for t in inputs)))
    rows = []
    for exporter, export in graphs.items():
        unpatched = run(session(export.files["unet"], cuda_providers(ort), ort), feeds, ort)
        for mode in ("bake", "switchable", "adapter"):
            result = apply_onnx(patch, export.files["unet"], work / f"{exporter}-{mode}.onnx", mode=mode)
            sess = session(result["files"][0], cuda_providers(ort), ort)
            adapter = result["files"][1] if mode == "adapter" else None
            error = float(np.max(np.abs(run(sess, feeds, ort, adapter=adapter) - fused)))
            off = None
            if mode != "bake":
                switched_off = run(sess, feeds, ort, erase_scale=0.0 if mode == "switchable" else None)
                off = float(np.max(np.abs(switched_off - unpatched)))
            rows.append(
                {"exporter": exporter, "mode": mode, "provider": sess.get_providers()[0], "max_abs_vs_fused": error,
                 "off_vs_unpatched": off, "ok": error <= PARITY and (off is None or off <= PARITY)}
            )
            log(f"parity {exporter:6} {mode:10} {rows[-1]}")
    return rows


def timings(work: Path, ort, runs: int, warmup: int) -> list[dict]:
    import torch
    from diffusers import UNet2DConditionModel

    from erasec.backends.onnx import OnnxOptions, PatchDeltas, SiteDelta, load_graph, patch_graph, write_graph
    from erasec.compiler.onnx_graphs.export import ExportOptions, export_unet

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SMOKE_UNET if CPU_SMOKE else SD15_UNET)).eval()
    base = {
        name.removesuffix(".weight"): p.detach().numpy().astype(np.float64)
        for name, p in unet.named_parameters()
        if ".attn2.to_k." in name or ".attn2.to_v." in name
    }
    clock = time.perf_counter()
    scratch = work / "sd15-export"
    scratch.mkdir(exist_ok=True)
    export_unet(unet, scratch / "model.onnx", ExportOptions(exporter="legacy"))
    unpatched = work / "sd15" / "unet.onnx"
    write_graph(load_graph(scratch / "model.onnx"), unpatched)
    log(f"exported the SD1.5-shaped UNet in {time.perf_counter() - clock:.0f}s")
    rng = np.random.default_rng(0)
    down = rng.standard_normal((8, 768)) / 768**0.5  # one shared map for all sites, as uce makes
    deltas = PatchDeltas(
        source="random rank-8 shared map",
        sites=tuple(
            SiteDelta(module_path=path, up=1e-2 * weight @ rng.standard_normal((768, 8)), down=down)
            for path, weight in sorted(base.items())
        ),
    )
    graphs = {"unpatched": (unpatched, None)}
    for mode in ("bake", "switchable", "adapter"):
        result = patch_graph(load_graph(unpatched), deltas, OnnxOptions(mode=mode), base_weights=base)
        files = write_graph(result.model, work / "sd15" / f"unet-{mode}.onnx", adapter=result.adapter)
        graphs[mode] = (files[0], files[-1] if mode == "adapter" else None)
    shapes = {"sample": (2, 4, 64, 64), "encoder_hidden_states": (2, 77, 768)}
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    feeds["timestep"] = np.array([981.0], np.float32)
    provider_sets = [("CPU smoke" if CPU_SMOKE else "CUDA", cuda_providers(ort))]
    if "TensorrtExecutionProvider" in ort.get_available_providers() and not CPU_SMOKE:
        provider_sets.insert(0, ("TensorRT", ["TensorrtExecutionProvider", *cuda_providers(ort)]))
    cases = [("unpatched", {}), ("bake", {}), ("switchable", {"erase_scale": 1.0}), ("switchable", {"erase_scale": 0.0}),
             ("adapter", {"adapter": True}), ("adapter", {})]
    rows = []
    for label, providers in provider_sets:
        for graph, options in cases:
            path, adapter = graphs[graph]
            clock = time.perf_counter()
            sess = session(path, providers, ort)
            created = time.perf_counter() - clock
            kwargs = {"erase_scale": options.get("erase_scale"), "adapter": adapter if options.get("adapter") else None}
            for _ in range(warmup):
                run(sess, feeds, ort, **kwargs)
            seconds = []
            for _ in range(runs):
                clock = time.perf_counter()
                run(sess, feeds, ort, **kwargs)
                seconds.append(time.perf_counter() - clock)
            rows.append({
                "providers": label, "provider": sess.get_providers()[0], "graph": graph,
                "variant": ", ".join(f"{k}={v}" for k, v in options.items()) or "-",
                "session_s": round(created, 2), "median_ms": 1000 * statistics.median(seconds),
                "p10_ms": 1000 * float(np.percentile(seconds, 10)), "p90_ms": 1000 * float(np.percentile(seconds, 90)),
                "runs": runs,
            })
            log(f"timing {rows[-1]}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("onnx-gpu-results"))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU (small UNet)")
    args = parser.parse_args()
    import onnxruntime as ort

    global CPU_SMOKE
    CPU_SMOKE = args.cpu_smoke
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available and not CPU_SMOKE:
        log(f"no CUDAExecutionProvider (available: {', '.join(available)}); pip install '.[gpu]' (onnxruntime-gpu)")
        return 2
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from pip wheels, when that is how they were installed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="erasec-onnx-gpu-") as work:
        os.environ.setdefault("ERASEC_CACHE_DIR", str(Path(work) / "cache"))
        parity_rows = parity(Path(work), ort)
        timing_rows = [] if args.skip_timings else timings(Path(work), ort, args.runs, args.warmup)
    facts = {"onnxruntime": ort.__version__, "providers": available, "python": platform.python_version(),
             "parity": parity_rows, "timings": timing_rows}
    (args.out / "onnx_gpu.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"onnxruntime {ort.__version__}; providers {', '.join(available)}\n")
    print("| exporter | mode | provider | max abs vs diffusers fused | switched off vs unpatched | ok |")
    print("|---|---|---|---|---|---|")
    for r in parity_rows:
        off = "-" if r["off_vs_unpatched"] is None else f"{r['off_vs_unpatched']:.1e}"
        print(f"| {r['exporter']} | {r['mode']} | {r['provider']} | {r['max_abs_vs_fused']:.1e} | {off} | {r['ok']} |")
    if timing_rows:
        print("\n| providers | graph | variant | session (s) | median (ms) | p10–p90 (ms) | runs |")
        print("|---|---|---|---|---|---|---|")
        for r in timing_rows:
            print(f"| {r['providers']} ({r['provider']}) | {r['graph']} | {r['variant']} | {r['session_s']} | "
                  f"{r['median_ms']:.2f} | {r['p10_ms']:.2f}–{r['p90_ms']:.2f} | {r['runs']} |")
    return 0 if all(r["ok"] for r in parity_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
