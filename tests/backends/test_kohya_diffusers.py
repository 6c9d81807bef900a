"""Real-client exactness: diffusers' own LoRA loader applies exactly W0 + ΔW, for every family.

The file is loaded with ``load_lora_weights`` on the family's pipeline and fused at scale 1.0, as a
diffusers user would; every attn2 to_k/to_v must equal W0 + ΔW to 1e-5 relative (fp32), where ΔW
comes from the compiler's float64 solution, and every other weight must be bit-identical. kohya
files carry diffusers-style names for SD1/SD2 and SGM/LDM names for SDXL (research/ecosystem.md
§1.7); the SDXL mixin maps the latter with the pipeline's ``unet_config`` (§1.3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from erasec.compiler.build import build
from erasec.compiler.models.builtin import builtin_model_path
from erasec.compiler.models.embedding_cache import CachingModel
from erasec.compiler.lowering.lower import Lowering
from erasec.compiler.models.open import open_model
from erasec.compiler.frontend.reader import load_spec
from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS

SPEC = """\
erasec: 1
name: exact
version: 1.0.0
model: {model}
method: {method}
erase:
  - {{concept: Van Gogh, anchor: art, templates: ["a painting by {{}}"]}}
  - {{concept: Kelly McKernan}}
preserve: [Claude Monet]
output: {{dtype: fp32, format: {format}}}
"""
SITES = {"tiny-sd1": 32, "tiny-sd2": 32, "tiny-sdxl": 140}
# 1e-5 relative in fp32: W0 + up@down formed by PEFT in fp32 against the float64 ΔW.
REL_TOL = 1e-5


def expected_deltas(spec_path):
    """module path → float64 ΔW of the weight's full shape, from the same spec lowered and solved
    outside the build (the pooled site's ΔW is [ΔW | 0]: its size/crop columns keep W0)."""
    spec = load_spec(spec_path, methods=tuple(PRESETS), allow_outside=True)  # a test's spec may name a cached model
    # encoded as a build encodes (one prompt per pass, one thread; no cache): the same rows, bit for bit
    model = CachingModel(open_model(spec.model, pooled=spec.options.pooled), None)
    pipeline = Pipeline.parse(PRESETS[spec.method].pipeline)  # its passes say what the lowering keeps (speed: W0)
    program = pipeline.apply(Lowering.for_pipeline(model, pipeline).lower(spec, PRESETS[spec.method]))
    weights = model.kv_weights()
    expected = {}
    for solved in program.solution.spaces:
        for site in program.target.space(solved.space).sites:
            if not solved.edits(site.role):
                continue  # e.g. speed edits to_v only: to_k must stay bit-identical
            delta = solved.delta(site.module_path, weights[site.module_path])
            if site.full_in_features:
                delta = np.pad(delta, [(0, 0), (0, site.full_in_features - site.in_features)])
            expected[site.module_path] = delta
    return expected


def load_pipeline(name: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = builtin_model_path(name)
    if name == "tiny-sdxl":
        return StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    return StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )


def _state(pipe) -> dict[str, torch.Tensor]:
    parts = ("unet", "text_encoder", "text_encoder_2")
    return {
        f"{part}.{k}": v.detach().clone()
        for part in parts
        if getattr(pipe, part, None) is not None
        for k, v in getattr(pipe, part).state_dict().items()
    }


def assert_w0_plus_delta(before, after, expected) -> None:
    """Edited K/V weights equal W0 + ΔW to REL_TOL; every other tensor is bit-identical."""
    assert sorted(after) == sorted(before)
    edited = {f"unet.{path}.weight": path for path in expected}
    assert set(edited) <= set(after)
    for key, value in after.items():
        if key in edited:
            w0 = before[key].double().numpy()
            want = w0 + expected[edited[key]]
            error = np.linalg.norm(value.double().numpy() - want) / np.linalg.norm(want)
            assert error < REL_TOL, f"{key}: relative error {error:.2e}"
            assert np.linalg.norm(expected[edited[key]]) > 1e-3 * np.linalg.norm(w0), "the edit is not trivial"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"


def _fuse(name: str, folder, weight_name: str):
    pipe = load_pipeline(name)
    before = _state(pipe)
    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="erase")
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    pipe.fuse_lora(lora_scale=1.0, components=components)
    pipe.unload_lora_weights()
    return before, _state(pipe)


@pytest.mark.parametrize("method", ["uce", "uce-legacy", "erasec", "speed", "rece"])
def test_diffusers_fuses_exactly_w0_plus_delta(tmp_path, tiny_sd1_path, method):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model="builtin:tiny-sd1", method=method, format="kohya"))
    build(spec, tmp_path / "patch.safetensors")
    expected = expected_deltas(spec)
    assert len(expected) == (16 if method == "speed" else 32)
    assert_w0_plus_delta(*_fuse("tiny-sd1", tmp_path, "patch.safetensors"), expected)


@pytest.mark.parametrize(
    ("name", "suffix", "format_"),
    # Single-file inputs give byte-identical LoRAs to folder inputs (tests/compiler/test_families.py),
    # so one single-file case per format suffices here.
    [
        ("tiny-sd1", ".safetensors", "kohya"),
        ("tiny-sd2", "", "kohya"),
        ("tiny-sdxl", "", "kohya"),
        ("tiny-sd2", ".safetensors", "peft"),
        pytest.param("tiny-sdxl", "", "peft", marks=pytest.mark.slow),
    ],
)
def test_every_family_layout_and_format_fuses_exactly(tmp_path, name, suffix, format_):
    """A LoRA built from the folder or the single file, in kohya or PEFT form, fused into the folder's pipeline."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=f"builtin:{name}{suffix}", method="uce", format=format_))
    build(spec, tmp_path / "patch.safetensors")
    expected = expected_deltas(spec)
    assert len(expected) == SITES[name]
    with safe_open(str(tmp_path / "patch.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    if format_ == "peft":
        assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    elif name == "tiny-sdxl":
        assert "lora_unet_output_blocks_2_1_transformer_blocks_7_attn2_to_k.lora_down.weight" in keys
        assert not [k for k in keys if "down_blocks" in k or "up_blocks" in k]
    else:
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert_w0_plus_delta(*_fuse(name, tmp_path, "patch.safetensors"), expected)


POOLED_SPEC = SPEC.replace("preserve: [Claude Monet]", "preserve: [Claude Monet]\noptions: {{pooled: true}}")


@pytest.mark.parametrize("format_", ["kohya", "peft"])
def test_sdxl_pooled_path_fuses_exactly(tmp_path, format_):
    """options.pooled: add_embedding.linear_1 (SGM label_emb.0.0) gets [ΔW | 0]: its pooled columns
    change, its size/crop columns keep W0; the K/V layers as before."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(POOLED_SPEC.format(model="builtin:tiny-sdxl", method="uce", format=format_))
    result = build(spec, tmp_path / "patch.safetensors")
    assert result.paths[-1] == "pooled add_embedding.linear_1[:, :32]"
    assert result.pooled_scores is not None and min(r.efficacy for r in result.pooled_scores.requests) > 0.5
    with safe_open(str(tmp_path / "patch.safetensors"), framework="pt") as handle:
        name = "lora_unet_label_emb_0_0" if format_ == "kohya" else "unet.add_embedding.linear_1"
        down = handle.get_tensor(f"{name}.lora_down.weight" if format_ == "kohya" else f"{name}.lora_A.weight")
    assert down.shape[1] == 6 * 8 + 32 and not down[:, 32:].any()

    expected = expected_deltas(spec)
    assert len(expected) == 141
    assert_w0_plus_delta(*_fuse("tiny-sdxl", tmp_path, "patch.safetensors"), expected)
