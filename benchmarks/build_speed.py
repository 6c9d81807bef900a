"""`erasec build` end to end against the published reference procedure, at full SD1.5 and SDXL size.

    python benchmarks/build_speed.py                        # SD1.5; N = 1, 10, 100; erasec, uce, uce-legacy; 3 runs
    python benchmarks/build_speed.py --models sd15,sdxl --sizes 1,10,100,1000 --reference-matrices 3
    python benchmarks/build_speed.py --sizes 1,10 --runs 1 --reference-sizes 1 --no-write

What it does (issue 8; research/perf-baseline.md §4–§7):

1. Writes the SD1.5 architecture (UNet 859.5M, CLIP-L 123M) and, with ``--models sd15,sdxl``, the
   SDXL one (UNet 2567.5M, CLIP-L + OpenCLIP-bigG) with random fp16 weights into ``--scratch`` with
   ``benchmarks/memory_families.py``'s writer (configs in code, nothing downloaded; reused when
   already there). Never commit the scratch folder.
2. Start-up: ``erasec --version``, a spec error, and ``import torch, transformers`` in fresh processes.
3. For each N and preset: a spec erasing ``artist i`` (no anchor: the preset's blank guide) and
   preserving ``painter j`` (N each), built by ``bin/erasec build --json --no-cache`` in a fresh
   process: wall time from process start to the file written, the phases the build reports, and the
   child's peak RSS (``wait4``'s ``ru_maxrss``); median of ``--runs``. Then one rebuild with a warm
   embedding cache (the same spec built once before into a scratch cache).
4. The reference procedure, run as published (train-scripts/train_erase.py ``edit_model``: per
   matrix, per prompt pair: tokenise to 77 and encode the pair, project through all the matrices,
   accumulate materialised outer products, ``mat1 @ torch.inverse(mat2)`` in fp32) in full at
   ``--reference-sizes`` and extrapolated linearly in N beyond (its cost is exactly M × (N + N + 1)
   pair steps + M inverses for M = 32 matrices, 140 for SDXL, whose pair is encoded by both
   encoders, penultimate states concatenated). The same loop in float64 on 2 matrices at N = 1 is
   compared with ``uce-legacy``'s ΔW on SD1.5 (relative Frobenius error; must be ≤ 1e-5).
5. The floor: measured fp32/fp64 matmul rates, and the encoder FLOPs of the distinct prompts each
   build encodes (the preset's preserve prior included) at their true token length, or 77 for
   ``uce-legacy`` (2 × non-embedding parameters per token + attention).

Results go to stdout and, unless ``--no-write``, into docs/performance.md between the
``build-speed`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BEGIN, END = "<!-- build-speed:begin -->", "<!-- build-speed:end -->"
LAM, ERASE_SCALE = 0.5, 1.0  # the reference CLI's values (perf-baseline.md §4)


def spec_text(n: int, preset: str, dtype: str = "fp16", first: int = 0) -> str:
    erase = "\n".join(f"  - {{concept: artist {i}}}" for i in range(first, first + n))
    keep = "\n".join(f"  - painter {j}" for j in range(first, first + n))
    return (f"erasec: 1\nname: bench-{n}\nversion: 1.0.0\nmethod: {preset}\nerase:\n{erase}\npreserve:\n{keep}\n"
            f"output: {{format: kohya, dtype: {dtype}}}\n")


def run_child(command: list[str], env: dict) -> tuple[float, float, str, int]:
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode()
    return seconds, usage.ru_maxrss / 2**20, text, os.waitstatus_to_exitcode(status)


def base_env(cache: Path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT.parent), ERASEC_CACHE_DIR=str(cache))


def startup(runs: int, scratch: Path) -> dict[str, float]:
    env = base_env(scratch / "cache-startup")
    bad = scratch / "bad.yaml"
    bad.write_text("erasec: 1\nname: bad\n")
    commands = {
        "erasec --version": [sys.executable, str(ROOT / "bin" / "erasec"), "--version"],
        "erasec build <spec error>": [sys.executable, str(ROOT / "bin" / "erasec"), "build", str(bad), "-o",
                                      str(scratch / "x.safetensors")],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'import torch, transformers.CLIPTextModel'": [
            sys.executable, "-c", "import torch; from transformers import CLIPTextModel"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    return {name: statistics.median(run_child(c, env)[0] for _ in range(runs)) for name, c in commands.items()}


def time_build(model: Path, n: int, preset: str, runs: int, scratch: Path) -> dict:
    spec = scratch / f"spec-{preset}-{n}.yaml"
    spec.write_text(spec_text(n, preset))
    command = [sys.executable, str(ROOT / "bin" / "erasec"), "build", str(spec), "-o",
               str(scratch / f"patch-{model.name}-{preset}-{n}.safetensors"), "--model", str(model), "--json"]
    cold = []
    for run in range(runs):  # each cold build starts from an empty cache, which it fills
        warm_cache = Path(tempfile.mkdtemp(dir=scratch, prefix="cache-"))
        seconds, rss, text, code = run_child(command, base_env(warm_cache))
        if code != 0:
            raise SystemExit(f"build failed ({preset}, N={n}):\n{text[-3000:]}")
        cold.append((seconds, rss, json.loads(text[text.index("{"):])))
    w_seconds, w_rss, w_text, code = run_child(command, base_env(warm_cache))
    warm = json.loads(w_text[w_text.index("{"):])
    # a new spec of the same size on the same model: its prompts are new, the preset's prior is cached
    other = scratch / f"spec-{preset}-{n}-new.yaml"
    other.write_text(spec_text(n, preset, first=n))
    new_command = [*command[:3], str(other), *command[4:]]
    n_seconds, _, n_text, code = run_child(new_command, base_env(warm_cache))
    if code != 0:
        raise SystemExit(f"build failed ({preset}, N={n}, new spec):\n{n_text[-3000:]}")
    median = lambda values: statistics.median(values)  # noqa: E731
    phases = {k: median([c[2]["seconds"][k] for c in cold]) for k in cold[0][2]["seconds"]}
    return {
        "model": model.name, "n": n, "preset": preset, "runs": runs,
        "wall": median([c[0] for c in cold]), "wall_min": min(c[0] for c in cold),
        "rss": max(c[1] for c in cold), "phases": phases, "prompts": cold[0][2].get("prompts", {}),
        "rows": cold[0][2]["rows"],
        "warm_wall": w_seconds, "warm_phases": warm["seconds"], "warm_prompts": warm.get("prompts", {}),
        "new_spec_wall": n_seconds,
    }


# --- the published reference procedure -----------------------------------------------------------


def load_reference_parts(model: Path, dtype, encoder_dtype=None):
    """(encode, matrices): ``encode(texts)`` → (embeddings [2, 77, d], attention mask) as the reference
    encodes a pair — CLIP-L's final state for SD1.5; for SDXL both encoders' penultimate states,
    concatenated, each padded by its own tokenizer (what the pipelines feed the UNet) — and the
    attn2 to_v then to_k matrices."""
    import torch
    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = [("tokenizer", "text_encoder", CLIPTextModel)]
    if (model / "text_encoder_2").is_dir():
        parts.append(("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))
    loaded = []
    for tokenizer_dir, encoder_dir, cls in parts:
        tokenizer = CLIPTokenizer.from_pretrained(model / tokenizer_dir, local_files_only=True)
        encoder = cls.from_pretrained(model / encoder_dir, local_files_only=True, torch_dtype=torch.float32)
        loaded.append((tokenizer, encoder.to(encoder_dtype or dtype).eval()))
    penultimate = len(loaded) > 1

    def encode(texts):
        states, mask = [], None
        for tokenizer, encoder in loaded:
            tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            mask = tokens.attention_mask if mask is None else mask
            with torch.no_grad():
                output = encoder(tokens.input_ids, output_hidden_states=penultimate)
            states.append(output.hidden_states[-2] if penultimate else output[0])
        return torch.cat(states, dim=-1), mask

    matrices = []
    with safe_open(str(model / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        names = [k for k in handle.keys() if "attn2.to_v.weight" in k] + [k for k in handle.keys() if "attn2.to_k.weight" in k]
        names = sorted(names, key=lambda k: ("to_k" in k, k))  # to_v first, then to_k, as with_to_k appends them
        for name in names:
            matrices.append((name, handle.get_tensor(name).to(dtype)))
    return encode, matrices


def reference_edit(encode, matrices, erase: list[str], retain: list[str], dtype, layers=None):
    """edit_model(..., technique='replace', with_to_k=True, lamb=0.5, erase_scale=1, preserve_scale)
    as published: new text ' ' for each erased concept; retain pairs (r, r). Returns (ΔW per matrix,
    phase seconds)."""
    import torch

    preserve_scale = max(0.1, 1 / len(retain))
    timing = dict.fromkeys(("encode", "project", "accumulate", "solve"), 0.0)
    result = {}
    chosen = range(len(matrices)) if layers is None else layers
    for layer_num in chosen:
        name, weight = matrices[layer_num]
        mat1 = LAM * weight.clone()
        mat2 = LAM * torch.eye(weight.shape[1], dtype=dtype)
        for pairs, scale in (([(old, " ") for old in erase], ERASE_SCALE), ([(r, r) for r in retain], preserve_scale)):
            for old_text, new_text in pairs:
                mark = time.perf_counter()
                embeddings, mask = encode([old_text, new_text])
                embeddings = embeddings.to(dtype)
                if old_text == new_text:  # a retain pair: all 77 rows
                    old_emb, new_emb = embeddings
                else:
                    i = int(mask[0].sum()) - 2
                    j = int(mask[1].sum()) - 2
                    far = max(i, j)
                    old_emb = embeddings[0][i : 77 - max(0, far - i)]
                    new_emb = embeddings[1][j : 77 - max(0, far - j)]
                timing["encode"] += time.perf_counter() - mark
                mark = time.perf_counter()
                with torch.no_grad():
                    values = [new_emb @ m.T for _, m in matrices]  # every matrix, one used
                timing["project"] += time.perf_counter() - mark
                mark = time.perf_counter()
                context = old_emb.reshape(old_emb.shape[0], old_emb.shape[1], 1)
                context_t = old_emb.reshape(old_emb.shape[0], 1, old_emb.shape[1])
                value = values[layer_num].reshape(values[layer_num].shape[0], values[layer_num].shape[1], 1)
                mat1 += scale * (value @ context_t).sum(dim=0)
                mat2 += scale * (context @ context_t).sum(dim=0)
                timing["accumulate"] += time.perf_counter() - mark
        mark = time.perf_counter()
        new_weight = mat1 @ torch.inverse(mat2)
        timing["solve"] += time.perf_counter() - mark
        result[name] = (new_weight - weight).double().numpy()
    return result, timing


def lora_deltas(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    deltas = {}
    for key in tensors:
        if key.endswith(".lora_down.weight"):
            base = key[: -len(".lora_down.weight")]
            scale = float(tensors[f"{base}.alpha"]) / tensors[key].shape[0]
            deltas[base] = scale * tensors[f"{base}.lora_up.weight"].astype(np.float64) @ tensors[key].astype(np.float64)
    return deltas


def check_equal(model: Path, scratch: Path) -> dict[str, float]:
    """Reference loop in float64 on 2 matrices vs erasec ``uce-legacy`` (fp32 output), N = 1: with the
    text encoder in float64 too, and with it in float32 as erasec runs it (edit arithmetic in float64)."""
    import torch

    spec = scratch / "spec-check.yaml"
    spec.write_text(spec_text(1, "uce-legacy", dtype="fp32"))
    out = scratch / "check.safetensors"
    seconds, _, text, code = run_child([sys.executable, str(ROOT / "bin" / "erasec"), "build", str(spec), "-o", str(out),
                                        "--model", str(model), "--no-cache"], base_env(scratch / "cache-check"))
    if code != 0:
        raise SystemExit(text)
    got = lora_deltas(out)
    found = {}
    for label, encoder_dtype in (("encoder float64", torch.float64), ("encoder float32", torch.float32)):
        encode, matrices = load_reference_parts(model, torch.float64, encoder_dtype)
        expected, _ = reference_edit(encode, matrices, ["artist 0"], ["", "painter 0"], torch.float64,
                                     layers=[0, len(matrices) - 1])
        errors = []
        for name, delta in expected.items():
            key = "lora_unet_" + name.removesuffix(".weight").replace(".", "_")
            errors.append(np.linalg.norm(got[key] - delta) / np.linalg.norm(delta))
        found[label] = max(errors)
    return found


def time_reference(model: Path, sizes: list[int], count: int) -> dict[int, dict]:
    """Seconds of the reference loop; with ``count`` < all matrices (spread over the widths), the
    measured time × matrices / count (every matrix costs the same loop: 2N + 1 encodes, a projection
    through every matrix)."""
    import torch

    encode, matrices = load_reference_parts(model, torch.float32)
    layers = [round(i * (len(matrices) - 1) / max(1, count - 1)) for i in range(count)] if count < len(matrices) else None
    scale = len(matrices) / count if layers else 1.0
    results = {}
    for n in sizes:
        clock = time.perf_counter()
        _, timing = reference_edit(encode, matrices, [f"artist {i}" for i in range(n)],
                                   [""] + [f"painter {j}" for j in range(n)], torch.float32, layers=layers)
        results[n] = {"total": (time.perf_counter() - clock) * scale, **{k: v * scale for k, v in timing.items()},
                      "matrices": count if layers else len(matrices)}
    return results


# --- the floor ---------------------------------------------------------------------------------------


def flop_rates() -> dict[str, float]:
    import torch

    rates = {}
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(2048, 2048, dtype=dtype)
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(5))
        rates[str(dtype).removeprefix("torch.")] = 2 * 2048**3 / best / 1e9
    return rates


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def encoder_gflop(model: Path, prompts: list[str], padded: bool) -> float:
    """Text-encoder forward FLOPs of the distinct ``prompts`` (every encoder of the model: CLIP-L; for
    SDXL also OpenCLIP-bigG): 2 × non-embedding parameters per token + attention (4·L²·d per layer)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer", local_files_only=True)
    lengths = [77 if padded else len(ids) for ids in tokenizer(sorted(set(prompts)))["input_ids"]]
    total = 0.0
    for folder in ("text_encoder", "text_encoder_2"):
        if not (model / folder / "config.json").is_file():
            continue
        config = json.loads((model / folder / "config.json").read_text())
        d, layers, ff = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
        params = layers * (4 * d * d + 2 * d * ff)
        total += sum(2 * params * length + layers * 4 * length * length * d for length in lengths)
    return total / 1e9


def build_prompts(n: int, preset: str) -> list[str]:
    """The prompts a build of ``spec_text(n, preset)`` encodes: the spec's, the blank guide and the
    empty prompt, and the preset's preserve prior."""
    from erasec.compiler.lowering.prompts import prior_prompts
    from erasec.compiler.frontend.presets import PRESETS

    prior = PRESETS[preset].prior
    prompts = [f"artist {i}" for i in range(n)] + [f"painter {j}" for j in range(n)] + ["", " "]
    return prompts + (prior_prompts(prior) if prior else [])


# --- report ------------------------------------------------------------------------------------------


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import torch

    return (f"{model}, nproc {len(os.sched_getaffinity(0))}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, load average at start "
            f"{os.getloadavg()[0]:.1f}")


MODEL_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
MATRICES = {"sd15": 32, "sdxl": 140}


def report(args, start, builds, reference, error, rates, floors) -> str:
    lines = [BEGIN, "", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`python benchmarks/build_speed.py {' '.join(sys.argv[1:])}` on: {machine()}.", "",
             f"Matmul rate measured in the same run: {rates['float32']:.0f} GFLOP/s fp32, "
             f"{rates['float64']:.0f} GFLOP/s fp64 (2048², best of 5).", "",
             *([f"The reference timings and the equality check are from an earlier run of this script: "
                f"{json.loads(args.reuse.read_text())['measured']}.", ""] if args.reuse else []),
             "**Start-up** (fresh process, median):", "", "| command | seconds |", "|---|---|"]
    lines += [f"| `{name}` | {value:.2f} |" for name, value in start.items()]
    lines += ["", "**`erasec build`, cold** (empty embedding cache, fresh process: wall = process start to file "
              "written, median of runs; phases as `--json` reports them; peak RSS of the child) and a **warm "
              "rebuild** (same spec, embedding cache filled):", "",
              "| model | preset | N erased + N kept | rows erase / keep | prompts encoded | wall (s) | load | encode | "
              "solve | evaluate | emit | peak RSS (GiB) | warm rebuild wall (s) / encode / after start-up | "
              "new spec, known model (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    imports = start.get("python -c 'import torch, transformers.CLIPTextModel'", 0.0)
    for b in builds:
        p, w = b["phases"], b["warm_phases"]
        lines.append(
            f"| {MODEL_NAMES[b['model']]} | {b['preset']} | {b['n']} | {b['rows']['erase']} / {b['rows']['preserve']} | "
            f"{b['prompts'].get('encoded', '?')} | {b['wall']:.2f} (min {b['wall_min']:.2f}) | {p['load']:.2f} | "
            f"{p['encode']:.2f} | {p['solve']:.2f} | {p['evaluate']:.2f} | {p['emit']:.2f} | {b['rss']:.2f} | "
            f"{b['warm_wall']:.2f} / {w['encode']:.2f} / {max(0.0, b['warm_wall'] - imports):.2f} | "
            f"{b['new_spec_wall']:.2f} |")
    lines += ["", "*After start-up* is the warm wall less the start-up of `import torch, transformers` measured above "
              "(a build imports both). *New spec, known model*: another spec of the same size (other artists "
              "and painters) built with that cache — the edit-and-rebuild loop: its own prompts are encoded, the "
              "preset's prior and the model's pins and Gram are not."]
    if args.skip:
        lines += ["", f"Not timed (`--skip {args.skip}`): those builds are encoder-bound; their floor is "
                  "N × the per-prompt cost the timed sizes show."]
    lines += ["", "**Reference procedure** (train_erase.py `edit_model` as published, fp32, every attn2 to_k/to_v "
              "matrix; `measured` = run in full here, `extrapolated` = N × the per-concept cost of the largest "
              "measured N, which the loop makes exactly linear):", "",
              "| model | N | how | reference (s) | encode | project | accumulate | solve |", "|---|---|---|---|---|---|---|---|"]
    for kind in sorted(reference):
        for n in sorted(reference[kind]):
            r, total = reference[kind][n], MATRICES[kind]
            how = "measured" if r["matrices"] == total else f"measured on {r['matrices']} of {total} matrices, × {total}/{r['matrices']}"
            lines.append(f"| {MODEL_NAMES[kind]} | {n} | {how} | {r['total']:.1f} | {r['encode']:.1f} | {r['project']:.1f} | "
                         f"{r['accumulate']:.1f} | {r['solve']:.1f} |")
    if not reference:
        lines += ["", "(reference not measured yet)"]
    lines += ["", "**Ratio** (reference ÷ erasec cold wall, same N; reference extrapolated where not measured; "
              "the floor is the encoder FLOPs of the build's distinct prompts at the measured fp32 rate):", "",
              "| model | preset | N | erasec (s) | reference (s) | × faster | encoder floor (s) | erasec ÷ floor |",
              "|---|---|---|---|---|---|---|---|"]
    for b in builds:
        n, kind = b["n"], b["model"]
        measured = reference.get(kind, {})
        if measured:
            largest = max(measured)
            per_pair = measured[largest]["total"] / (2 * largest + 1)
            ref = measured[n]["total"] if n in measured else per_pair * (2 * n + 1)
            ref_text, faster = f"{ref:.0f}{'' if n in measured else ' (extrap.)'}", f"{ref / b['wall']:.0f}×"
        else:
            ref_text, faster = "–", "–"
        floor = floors.get((kind, b["preset"], n))
        floor_text = f"{floor:.2f}" if floor else "–"
        ratio = f"{b['wall'] / floor:.1f}" if floor else "–"
        lines.append(f"| {MODEL_NAMES[kind]} | {b['preset']} | {n} | {b['wall']:.2f} | {ref_text} | {faster} | "
                     f"{floor_text} | {ratio} |")
    if error:
        lines += ["", "Equality: the reference loop with its edit arithmetic in float64 (2 of 32 matrices, N = 1, "
                  "SD1.5-sized) against erasec `uce-legacy` (fp32 output), max relative Frobenius error of ΔW: "
                  + "; ".join(f"{label}: **{value:.1e}** ({'≤' if value <= 1e-5 else '>'} 1e-5)" for label, value in error.items())
                  + ". With the text encoder in float32 on both sides the two algorithms agree; with the reference's "
                  "encoder in float64 the difference is erasec's fp32 encoding, amplified by cond(M2) "
                  "(an earlier baseline on SD1.5-sized random weights measured 1.2e-5 the same way)."]
    lines += ["", "The encoder floor counts the prompts each preset encodes: the spec's at their true token length "
              "(`uce`, `erasec`) or padded to 77 (`uce-legacy`), and for `erasec` its 300-caption preserve prior; "
              "it leaves out reading the encoder, start-up and the solve.", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default="/tmp/erasec-bench", type=Path)
    parser.add_argument("--models", default="sd15", help="sd15, sdxl or both (sd15,sdxl)")
    parser.add_argument("--sizes", default="1,10,100")
    parser.add_argument("--presets", default="erasec,uce,uce-legacy")
    parser.add_argument("--runs", default=3, type=int)
    parser.add_argument("--reference-sizes", default="1")
    parser.add_argument("--reference-matrices", default=32, type=int,
                        help="time the reference on this many matrices (of 32 for SD1.5, 140 for SDXL)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="JSON of an earlier run's reference timings and check, instead of measuring them")
    parser.add_argument("--skip", default="sd15:uce-legacy:1000,sdxl:*:1000",
                        help="MODEL:PRESET:N builds not to time (* matches any); the defaults would take the "
                             "better part of an hour on 2 cores, encoder-bound")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    skipped = [tuple(item.split(":")) for item in args.skip.split(",") if item]

    from memory_families import write_model

    kinds = args.models.split(",")
    models = {kind: args.scratch / kind for kind in kinds}
    for kind, model in models.items():
        write_model(kind, model)
    work = Path(tempfile.mkdtemp(dir=args.scratch, prefix="speed-"))
    rates = flop_rates()
    print(f"rates {rates}", file=sys.stderr)
    start = startup(args.runs, work)
    print(f"start-up {start}", file=sys.stderr)
    # builds first: a child's ru_maxrss starts at its parent's RSS when forked, so the parent must not
    # hold the reference's model while it times builds
    if args.reuse:  # the reference and the check from an earlier run of this script on this machine
        prior = json.loads(args.reuse.read_text())
        reference = prior["reference"]
        if all(key.isdigit() for key in reference):  # written before SDXL was measured: SD1.5 only
            reference = {"sd15": reference}
        error = prior["error"]
        reference = {kind: {int(n): v for n, v in sizes.items()} for kind, sizes in reference.items()}
    else:
        error, reference = {}, {}
    builds, floors = [], {}
    for kind, model in models.items():
        for preset in args.presets.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                if any(all(part in ("*", value) for part, value in zip(rule, (kind, preset, str(n)))) for rule in skipped):
                    continue
                result = time_build(model, n, preset, args.runs, work)
                builds.append(result)
                print(f"{kind} {preset} N={n}: {result['wall']:.2f}s {result['phases']} rss {result['rss']:.2f} "
                      f"warm {result['warm_wall']:.2f}s", file=sys.stderr)
                (work / "builds.json").write_text(json.dumps(builds, indent=1))  # raw results as they come
                prompts = build_prompts(n, preset)
                floors[(kind, preset, n)] = encoder_gflop(model, prompts, preset == "uce-legacy") / rates["float32"]
                text = report(args, start, builds, reference, error, rates, floors)
                if not args.no_write:  # after every build, so an interrupted run still leaves its table
                    write_section(text)
    if not args.reuse:
        if "sd15" in models:
            error = check_equal(models["sd15"], work)
            print(f"float64 reference vs uce-legacy: {error}", file=sys.stderr)
        sizes = [int(s) for s in args.reference_sizes.split(",")]
        for kind, model in models.items():
            reference[kind] = time_reference(model, sizes, min(args.reference_matrices, MATRICES[kind]))
            print(f"reference {kind} {reference[kind]}", file=sys.stderr)
        (work / "reference.json").write_text(json.dumps(
            {"measured": f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}",
             "error": error, "reference": reference}, indent=1))
        text = report(args, start, builds, reference, error, rates, floors)
        if not args.no_write:
            write_section(text)
    print(text)


def write_section(text: str) -> None:
    path = ROOT / "docs" / "performance.md"
    old = path.read_text() if path.exists() else "# Performance\n\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n## Build speed (benchmarks/build_speed.py)\n\n" + text + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
