"""builtin:tiny-sd1 — SD1.5's UNet structure in miniature, reproducible, loadable by diffusers offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from erasec.compiler.models.builtin import BUILTIN_MODELS, builtin_model_path
from erasec.compiler.errors import ModelError


def sd15_attn2_paths() -> list[str]:
    """SD1.5's 16 cross-attention module paths, written out from its block structure."""
    blocks = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    blocks += ["mid_block.attentions.0"]
    blocks += [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
    return [f"{block}.transformer_blocks.0.attn2" for block in blocks]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline(tiny_sd1_path: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        tiny_sd1_path, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )


def test_unknown_name() -> None:
    with pytest.raises(ModelError) as caught:
        builtin_model_path("huge-sd9")
    assert str(caught.value) == (
        f"builtin:huge-sd9: unknown built-in model; available: {', '.join(BUILTIN_MODELS)} "
        "(add .safetensors for a single file)"
    )
    assert BUILTIN_MODELS[:3] == ("tiny-sd1", "tiny-sd2", "tiny-sdxl")


def test_cached_under_env_root_and_reused(tiny_sd1_path: Path, erasec_cache_dir: Path) -> None:
    assert tiny_sd1_path == erasec_cache_dir / "models" / "tiny-sd1-v1"
    stamp = (tiny_sd1_path / "model_index.json").stat().st_mtime_ns
    assert builtin_model_path("tiny-sd1") == tiny_sd1_path
    assert (tiny_sd1_path / "model_index.json").stat().st_mtime_ns == stamp
    names = [p.name for p in (erasec_cache_dir / "models").iterdir()]
    assert "tiny-sd1-v1" in names and not [n for n in names if n.startswith(".")]  # no staging left


def test_rebuild_is_byte_identical(tiny_sd1_path: Path, tmp_path: Path) -> None:
    first = _files(tiny_sd1_path)
    second = _files(builtin_model_path("tiny-sd1", cache_dir=tmp_path))
    assert sorted(first) == sorted(second)
    assert "unet/diffusion_pytorch_model.safetensors" in first
    for name in first:
        assert first[name] == second[name], name


def test_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    builtin_model_path("tiny-sd1", cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_unet_has_sd15_cross_attention_paths(pipeline) -> None:
    attn2 = [name for name, _ in pipeline.unet.named_modules() if name.endswith(".attn2")]
    # named_modules registers up_blocks before mid_block, so compare as sets (model order is
    # checked in test_model.py).
    assert sorted(attn2) == sorted(sd15_attn2_paths()) and len(attn2) == 16
    keys = [dict(pipeline.unet.named_modules())[f"{p}.to_k"].weight.detach() for p in attn2]
    assert all(float(w.std()) > 1e-3 for w in keys)
    assert not torch.equal(keys[0], keys[1])


def test_text_states_differ_across_prompts(pipeline) -> None:
    with torch.inference_mode():
        embeds, _ = pipeline.encode_prompt(["a cat", "a dog"], "cpu", 1, False)
    assert embeds.shape == (2, 77, 32)
    assert float((embeds[0, 2] - embeds[1, 2]).abs().max()) > 1e-2  # the differing token's row
    assert torch.equal(embeds[0, 0], embeds[1, 0])  # BOS row: causal, so identical


def test_pipeline_runs_offline(pipeline) -> None:
    assert pipeline.tokenizer.model_max_length == 77
    out = pipeline(
        "a photo of an astronaut",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 32, 32, 3)
    assert np.isfinite(out.images).all()
