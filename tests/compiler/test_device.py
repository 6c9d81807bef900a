"""Builds on a device (issue 14 item 7; compiler/models/placement.py): the device path — encoders
moved to the device, prompts batched, fp32 with TF32 off — gives the CPU path's ΔW to 1e-6
relative (the issue's tolerance). Tested on the CPU always, with the device path run on the CPU
device (``--device cpu --encode-batch N``), and on a GPU when torch sees one. This team had no GPU
machine: the CUDA tests are skipped here and have not run.

The rows' own tolerances: the device path pads every prompt to the model's full length and cuts it
back, which changes a row of tiny-sd1's CLIP by ≤ 3.6e-7 relative (measured; causal attention, so the
same value up to fp32 rounding); bf16 moves a row by ≈ 1e-2 (8 mantissa bits)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import fails, run
from erasec.compiler.build import BuildOptions, build
from erasec.compiler.models.embedding_cache import CachingModel
from erasec.compiler.models.open import open_model
from erasec.compiler.models.placement import CPU_PATH, EncodeOptions, Placement, placed
from erasec.patches.read import read_patch

DELTA_TOLERANCE = 1e-6  # ΔW relative (Frobenius), the issue's
PROMPTS = ["Van Gogh", "a painter", "Claude Monet", "a photo of a cat", "", "the starry night over the Rhône"]
SPEC = """\
erasec: 1
name: device
version: 1.0.0
model: builtin:{model}
method: uce
erase:
  - {{concept: Van Gogh, anchor: a painter}}
  - {{concept: Kelly McKernan, anchor: art}}
preserve: [Claude Monet, a photo of a cat, a river at dusk]
options: {{lambda: 1.0{extra}}}
output: {{format: peft}}
"""
MODELS = {"tiny-flux": ", sequence_length: 16", "tiny-sd1": ""}
cuda = pytest.importorskip("torch").cuda.is_available()


def _spec(folder, model: str):
    path = folder / f"{model}.yaml"
    path.write_text(SPEC.format(model=model, extra=MODELS[model]))
    return path


def _relative_delta_error(a, b) -> float:
    first, second = read_patch(a), read_patch(b)
    assert first.layers() == second.layers()
    worst = 0.0
    for layer in first.layers():
        delta = first.layer_delta(layer)
        worst = max(worst, float(np.linalg.norm(second.layer_delta(layer) - delta) / np.linalg.norm(delta)))
    return worst


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_device_path_on_the_cpu_gives_the_cpu_paths_delta(tmp_path, model, tiny_sd1_path, tiny_flux_path):
    spec = _spec(tmp_path, model)
    cpu = build(spec, tmp_path / "cpu.safetensors", BuildOptions(device="cpu", cache=False))
    device = build(spec, tmp_path / "device.safetensors", BuildOptions(device="cpu", encode_batch=4, cache=False))
    assert cpu.device == {"kind": "cpu", "dtype": "fp32", "batch": 1}
    assert device.device == {"kind": "cpu", "dtype": "fp32", "batch": 4}
    assert device.prompts["encoded"] == cpu.prompts["encoded"]  # the batch fillers are not counted
    assert _relative_delta_error(cpu.output, device.output) <= DELTA_TOLERANCE
    manifest = read_patch(device.output).metadata
    assert json.loads(manifest["erasec.device"]) == {"batch": 4, "dtype": "fp32", "kind": "cpu"}


@pytest.mark.skipif(not cuda, reason="no CUDA device: this team's machines had none")
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_gpu_build_gives_the_cpu_builds_delta(tmp_path, model, tiny_sd1_path, tiny_flux_path):
    spec = _spec(tmp_path, model)
    cpu = build(spec, tmp_path / "cpu.safetensors", BuildOptions(device="cpu", cache=False))
    gpu = build(spec, tmp_path / "gpu.safetensors", BuildOptions(device="cuda", cache=False))
    assert gpu.device == {"kind": "cuda", "dtype": "fp32", "batch": 32}
    assert _relative_delta_error(cpu.output, gpu.output) <= DELTA_TOLERANCE
    again = build(spec, tmp_path / "again.safetensors", BuildOptions(device="cuda", cache=False))
    assert again.output.read_bytes() == gpu.output.read_bytes()  # byte-identical per device kind


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert EncodeOptions().resolve() == (Placement(kind="cuda", batch=32) if cuda else CPU_PATH)
    assert EncodeOptions(device="cpu", dtype="bf16").resolve() == Placement(dtype="bf16")


@pytest.mark.skipif(cuda, reason="the refusal of --device cuda needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, tiny_sd1_path):
    out = tmp_path / "out.safetensors"
    fails(["build", _spec(tmp_path, "tiny-sd1"), "-o", out, "--device", "cuda"], "--device cuda: torch ")
    assert not out.exists()


def test_encoder_options_are_checked():
    with pytest.raises(Exception, match=r"--encode-batch: 0 is not a number of prompts"):
        EncodeOptions(batch=0)
    with pytest.raises(Exception, match=r"--device: 'gpu' is not one of auto, cpu, cuda"):
        EncodeOptions(device="gpu")
    result = run("build", "x.yaml", "-o", "x.safetensors", "--encoder-dtype", "fp16")
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in result.output


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd1", "minilm-sd1"])
def test_on_the_device_path_a_prompts_rows_do_not_depend_on_its_company(name, tiny_flux_path, tiny_sd1_path, minilm_sd1_path):
    """Every pass has one shape (full batch, full length), so the same kernels compute a prompt's rows
    whichever prompts share its pass — what lets the cache hold them and a device's builds repeat."""
    placement = Placement(batch=4)
    model = CachingModel(placed(open_model(f"builtin:{name}"), placement), None)
    alone = model.encode(["Van Gogh"], padded=False)[0]
    for company in (PROMPTS[1:4], PROMPTS[3:6], PROMPTS[1:2]):
        rows = model.encode(["Van Gogh", *company], padded=False)[0]
        assert np.array_equal(rows, alone)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd1"])
def test_device_path_rows_equal_the_cpu_paths_and_bf16_moves_them_by_its_precision(name, tiny_flux_path, tiny_sd1_path):
    cpu = CachingModel(open_model(f"builtin:{name}"), None)
    reference = cpu.encode(PROMPTS, padded=False) + cpu.encode(PROMPTS, padded=True)
    for placement, low, high in ((Placement(batch=4), 0.0, 1e-6), (Placement(dtype="bf16", batch=4), 1e-3, 5e-2)):
        model = CachingModel(placed(open_model(f"builtin:{name}"), placement), None)
        rows = model.encode(PROMPTS, padded=False) + model.encode(PROMPTS, padded=True)
        assert [r.shape for r in rows] == [r.shape for r in reference]
        error = max(np.abs(r - e).max() / np.abs(e).max() for r, e in zip(rows, reference))
        assert low <= error <= high, (placement, error)


def test_the_cache_keeps_each_placements_rows_apart(tmp_path, tiny_sd1_path):
    spec = _spec(tmp_path, "tiny-sd1")
    cache = tmp_path / "cache"
    cpu = build(spec, tmp_path / "cpu.safetensors", BuildOptions(device="cpu", cache_dir=cache))
    batched = build(spec, tmp_path / "batched.safetensors", BuildOptions(device="cpu", encode_batch=4, cache_dir=cache))
    assert batched.prompts == {"cached": 0, "encoded": cpu.prompts["encoded"]}
    warm = build(spec, tmp_path / "warm.safetensors", BuildOptions(device="cpu", encode_batch=4, cache_dir=cache))
    assert warm.prompts == {"cached": cpu.prompts["encoded"], "encoded": 0}
    assert warm.output.read_bytes() == batched.output.read_bytes()
    assert cpu.output.read_bytes() != batched.output.read_bytes()  # erasec.device differs, at least


def test_an_fp16_encoder_runs_on_the_device_path_in_fp32(tmp_path, tiny_sd1_single_file):
    """A single file's fp16 CLIP computes in fp32 through host-workspace hooks
    (``text_encoders.computing_in_fp32``); the device path takes them off and casts the encoder."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_sd1_single_file), framework="pt") as handle:
        metadata = handle.metadata()
    half = tmp_path / "half.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(str(tiny_sd1_single_file)).items()}, str(half), metadata=metadata)
    placement = Placement(batch=4)
    cpu = CachingModel(open_model(str(half)), None).encode(PROMPTS, padded=True)
    device = CachingModel(placed(open_model(str(half)), placement), None)
    rows = device.encode(PROMPTS, padded=True)
    assert max(np.abs(r - e).max() / np.abs(e).max() for r, e in zip(rows, cpu)) <= 1e-6
