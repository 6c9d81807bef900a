"""Site names across layouts, checked against research/ecosystem.md §3.3 (SD1/SD2) and §3.4 (SDXL)."""

from __future__ import annotations

import pytest

from erasec.ir import LinearSite, VerifyError
from erasec.ir.naming import (
    checkpoint_weight_name,
    diffusers_module_path,
    kohya_module_name,
    ldm_module_path,
    peft_module_name,
)

# ecosystem.md §3.3: the 16 SD1.5/SD2 cross-attention blocks, diffusers prefix ↔ LDM prefix.
SD_TABLE = [
    ("down_blocks.0.attentions.0", "input_blocks.1.1"),
    ("down_blocks.0.attentions.1", "input_blocks.2.1"),
    ("down_blocks.1.attentions.0", "input_blocks.4.1"),
    ("down_blocks.1.attentions.1", "input_blocks.5.1"),
    ("down_blocks.2.attentions.0", "input_blocks.7.1"),
    ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    ("mid_block.attentions.0", "middle_block.1"),
    ("up_blocks.1.attentions.0", "output_blocks.3.1"),
    ("up_blocks.1.attentions.1", "output_blocks.4.1"),
    ("up_blocks.1.attentions.2", "output_blocks.5.1"),
    ("up_blocks.2.attentions.0", "output_blocks.6.1"),
    ("up_blocks.2.attentions.1", "output_blocks.7.1"),
    ("up_blocks.2.attentions.2", "output_blocks.8.1"),
    ("up_blocks.3.attentions.0", "output_blocks.9.1"),
    ("up_blocks.3.attentions.1", "output_blocks.10.1"),
    ("up_blocks.3.attentions.2", "output_blocks.11.1"),
]
# §3.4: SDXL's up_blocks.0 holds the 10-deep 1280-channel blocks.
SDXL_TABLE = [
    ("down_blocks.1.attentions.0", "input_blocks.4.1"),
    ("down_blocks.2.attentions.1", "input_blocks.8.1"),
    ("up_blocks.0.attentions.0", "output_blocks.0.1"),
    ("up_blocks.0.attentions.2", "output_blocks.2.1"),
    ("up_blocks.1.attentions.2", "output_blocks.5.1"),
]


@pytest.mark.parametrize(("diffusers", "ldm"), SD_TABLE + SDXL_TABLE)
def test_attention_blocks_follow_the_tables(diffusers: str, ldm: str) -> None:
    for suffix in ("transformer_blocks.0.attn2.to_k", "transformer_blocks.7.attn2.to_v"):
        assert ldm_module_path(f"{diffusers}.{suffix}") == f"{ldm}.{suffix}"
        assert diffusers_module_path(f"{ldm}.{suffix}") == f"{diffusers}.{suffix}"


def test_names_in_every_layout() -> None:
    site = LinearSite(
        module_path="up_blocks.0.attentions.2.transformer_blocks.7.attn2.to_k", out_features=8, in_features=4, role="k"
    )
    assert kohya_module_name(site, "sdxl") == "lora_unet_output_blocks_2_1_transformer_blocks_7_attn2_to_k"
    assert kohya_module_name(site, "sd1") == "lora_unet_up_blocks_0_attentions_2_transformer_blocks_7_attn2_to_k"
    assert peft_module_name(site, "sd1") == "unet.up_blocks.0.attentions.2.transformer_blocks.7.attn2.to_k"
    assert checkpoint_weight_name(site, "diffusers") == f"{site.module_path}.weight"
    assert checkpoint_weight_name(site, "single-file") == (
        "model.diffusion_model.output_blocks.2.1.transformer_blocks.7.attn2.to_k.weight"
    )
    pooled = "add_embedding.linear_1"
    assert ldm_module_path(pooled) == "label_emb.0.0" and diffusers_module_path("label_emb.0.0") == pooled
    assert kohya_module_name(pooled, "sdxl") == "lora_unet_label_emb_0_0"


@pytest.mark.parametrize(
    ("call", "argument", "message"),
    [
        (ldm_module_path, "conv_in", "site conv_in: not inside a UNet attention block; no LDM name"),
        (ldm_module_path, "down_blocks.0.attentions.3.x", "site down_blocks.0.attentions.3.x: attention 3 exceeds layers_per_block 2"),
        (diffusers_module_path, "input_blocks.0.1.x", "LDM path input_blocks.0.1.x: input block 0 is conv_in, not an attention block"),
        (diffusers_module_path, "out.2", "LDM path out.2: not a UNet attention block; no diffusers name"),
    ],
)
def test_unnameable_paths(call, argument: str, message: str) -> None:
    with pytest.raises(VerifyError) as caught:
        call(argument)
    assert str(caught.value) == message
