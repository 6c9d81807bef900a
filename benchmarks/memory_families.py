"""Peak memory and time of a 10-concept build on full-size SD1.5 and SDXL models (random weights).

    python benchmarks/memory_families.py                      # both models, scratch in /tmp/erasec-bench
    python benchmarks/memory_families.py --models sdxl --scratch /data/bench --layouts diffusers

The script writes each model once into the scratch folder as a diffusers folder with the real
configurations (SD1.5: UNet 859.5M parameters, CLIP-L 123M; SDXL base: UNet 2567.5M, CLIP-L +
OpenCLIP-bigG 817M; research/ecosystem.md §3.3–§3.4), every tensor fp16 and random (weights scaled
so that activations stay finite), streamed to disk one tensor at a time — the writer never holds a
whole model; the single-file layout is the same architecture streamed under LDM/SGM names (its
random values differ from the folder's). Then each
build runs ``erasec build`` in a fresh process on a 10-concept ``uce`` spec, and the parent reads
that process's peak RSS (``wait4``'s ``ru_maxrss``) and wall time. Issue 4's target: the SDXL
build's peak RSS stays below the size of its two text encoders plus 1 GiB (the UNet is never
loaded whole). Results go to stdout as a Markdown table; copy them to docs/performance.md with
the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

from erasec.compiler.models.families import FAMILIES
from erasec.compiler.models.families.sd import SD15_UNET, SDXL_UNET  # the real UNet configurations (one place)

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = [
    "Van Gogh", "Claude Monet", "Pablo Picasso", "Salvador Dali", "Rembrandt",
    "Kelly McKernan", "Greg Rutkowski", "Frida Kahlo", "Andy Warhol", "Hokusai",
]
SPEC = """\
erasec: 1
name: bench
version: 1.0.0
method: uce
erase:
{erase}
preserve: [a photo of a cat, a landscape painting, a portrait of a woman]
output: {{format: kohya, dtype: fp16}}
"""

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
             hidden_act="gelu", projection_dim=1280)


def _stream_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> int:
    """Write random fp16 tensors of ``shapes`` without holding more than one in memory."""
    import torch

    names = sorted(shapes)
    header, offset = {}, 0
    for name in names:
        size = 2 * int(torch.Size(shapes[name]).numel())
        header[name] = {"dtype": "F16", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    generator = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            shape = shapes[name]
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "layer_norm1.weight",
                              "layer_norm2.weight", "final_layer_norm.weight", "norm_out.weight")):
                tensor = torch.ones(shape, dtype=torch.float16)
            elif len(shape) == 1:
                tensor = (0.02 * torch.randn(shape, generator=generator)).to(torch.float16)
            else:
                fan_in = shape[1]
                for extra in shape[2:]:
                    fan_in *= extra
                tensor = (torch.randn(shape, generator=generator) / fan_in**0.5).to(torch.float16)
            stream.write(tensor.numpy().tobytes())
    return 8 + len(text) + offset


def write_model(kind: str, folder: Path) -> dict[str, int]:
    """A full-size random diffusers folder; returns bytes per component."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from erasec.compiler.models.builtin.recipes import model_index as _model_index
    from erasec.compiler.models.tokenizer import OPEN_CLIP_PAD_TOKEN, write_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return json.loads((folder / "sizes.json").read_text())
    sizes = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SDXL_UNET if kind == "sdxl" else SD15_UNET))
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
        )
        encoders = [("text_encoder", CLIPTextModel(CLIPTextConfig(**CLIP_L, bos_token_id=49406, eos_token_id=49407)))]
        if kind == "sdxl":
            config = CLIPTextConfig(**BIG_G, bos_token_id=49406, eos_token_id=49407)
            encoders.append(("text_encoder_2", CLIPTextModelWithProjection(config)))
    unet.save_config(folder / "unet")
    sizes["unet"] = _stream_safetensors(
        folder / "unet" / "diffusion_pytorch_model.safetensors", {n: tuple(t.shape) for n, t in unet.state_dict().items()}, 1
    )
    vae.save_config(folder / "vae")
    sizes["vae"] = _stream_safetensors(
        folder / "vae" / "diffusion_pytorch_model.safetensors", {n: tuple(t.shape) for n, t in vae.state_dict().items()}, 2
    )
    for seed, (component, model) in enumerate(encoders, start=3):
        model.config.save_pretrained(folder / component)
        shapes = {n: tuple(t.shape) for n, t in model.state_dict().items() if not n.endswith("position_ids")}
        sizes[component] = _stream_safetensors(folder / component / "model.safetensors", shapes, seed)
    write_clip_tokenizer(folder / "tokenizer")
    if kind == "sdxl":
        write_clip_tokenizer(folder / "tokenizer_2", pad_token=OPEN_CLIP_PAD_TOKEN)
    (folder / "model_index.json").write_text(json.dumps(_model_index(sdxl=kind == "sdxl"), indent=2))
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return sizes


def write_single_file(kind: str, path: Path) -> None:
    """The same architecture as one LDM/SGM file (other random values), streamed like the folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from erasec.compiler.models import layout

    if path.is_file():
        return
    with torch.device("meta"):
        unet = UNet2DConditionModel(**(SDXL_UNET if kind == "sdxl" else SD15_UNET))
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
        )
        clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L)).state_dict()
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**BIG_G)).state_dict() if kind == "sdxl" else None
    attention_up = frozenset(i for i, k in enumerate(unet.config.up_block_types) if "CrossAttn" in k)
    shapes = {
        layout.LDM_UNET_PREFIX + layout.unet_key_to_ldm(k, attention_up): tuple(v.shape)
        for k, v in unet.state_dict().items()
    }
    for key, value in vae.state_dict().items():
        name, to_conv = layout.vae_key_to_ldm(key, 4)
        shapes[layout.VAE_PREFIX + name] = tuple(value.shape) + ((1, 1) if to_conv else ())
    prefix = FAMILIES[kind if kind == "sdxl" else "sd1"].single_file_encoder("text_encoder").prefix + "text_model."
    shapes.update({prefix + k: tuple(v.shape) for k, v in clip_l.items() if not k.endswith("position_ids")})
    if big_g is not None:
        open_clip = layout.clip_to_open_clip({k: v for k, v in big_g.items() if not k.endswith("position_ids")},
                                             extra_block=False)
        shapes.update({FAMILIES["sdxl"].single_file_encoder("text_encoder_2").prefix + k: tuple(v.shape) for k, v in open_clip.items()})
    _stream_safetensors(path, shapes, 7)


def measure(model: str, scratch: Path) -> tuple[float, float, str]:
    """(peak RSS in GiB, wall seconds, the summary's first line) of one ``erasec build``."""
    spec = scratch / "spec.yaml"
    spec.write_text(SPEC.format(erase="\n".join(f"  - {{concept: {c}, anchor: art}}" for c in CONCEPTS)))
    command = [sys.executable, str(ROOT / "bin" / "erasec"), "build", str(spec), "-o", str(scratch / "patch.safetensors"),
               "--model", model]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    output = process.stdout.read().decode()
    if status != 0:
        raise SystemExit(f"build failed:\n{output}")
    return usage.ru_maxrss / 2**20, seconds, output.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--layouts", default="diffusers,single-file")
    parser.add_argument("--scratch", default="/tmp/erasec-bench", type=Path)
    args = parser.parse_args()
    rows = []
    for kind in args.models.split(","):
        folder = args.scratch / kind
        clock = time.perf_counter()
        sizes = write_model(kind, folder)
        print(f"{kind}: model ready in {time.perf_counter() - clock:.0f} s ({sum(sizes.values()) / 2**30:.2f} GiB)",
              file=sys.stderr)
        encoders = sum(v for k, v in sizes.items() if k.startswith("text_encoder")) / 2**30
        for layout in args.layouts.split(","):
            location = str(folder)
            if layout == "single-file":
                single = args.scratch / f"{kind}.safetensors"
                write_single_file(kind, single)
                location = str(single)
            rss, seconds, line = measure(location, args.scratch)
            rows.append((kind, layout, sizes["unet"] / 2**30, encoders, rss, seconds, rss < encoders + 1))
            print(f"{kind} {layout}: {rss:.2f} GiB peak, {seconds:.1f} s — {line}", file=sys.stderr)
    print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
          f"Python {platform.python_version()}\n")
    print("| model | layout | UNet file (GiB) | text encoders (GiB) | peak RSS (GiB) | wall (s) | RSS < encoders + 1 GiB |")
    print("|---|---|---|---|---|---|---|")
    for kind, layout, unet, encoders, rss, seconds, ok in rows:
        print(f"| {kind} | {layout} | {unet:.2f} | {encoders:.2f} | {rss:.2f} | {seconds:.1f} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
