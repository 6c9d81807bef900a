"""builtin:minilm-sd1 — the semantic test bed: a real pretrained text encoder behind an SD1 UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasec.compiler.models.open import open_model


@pytest.fixture(scope="module")
def model(minilm_sd1_path):
    return open_model("builtin:minilm-sd1")


def test_target_is_sd1_shaped_with_a_384_wide_minilm_space(model):
    assert model.target.family == "sd1"
    (space,) = model.target.spaces
    assert (space.name, space.dim, len(space.sites)) == ("minilm", 384, 32)
    assert space.sites[0].module_path == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def test_wordpiece_ids_with_cls_and_sep(model):
    assert model.tokenize(["Van Gogh", ""]) == [[101, 3158, 26603, 102], [101, 102]]


def test_rows_are_the_masked_bert_states(model, minilm_sd1_path):
    from transformers import BertModel, BertTokenizerFast

    prompts = ["a painting by Claude Monet", "Van Gogh"]
    tokenizer = BertTokenizerFast.from_pretrained(str(minilm_sd1_path / "tokenizer"), local_files_only=True)
    encoder = BertModel.from_pretrained(str(minilm_sd1_path / "text_encoder"), local_files_only=True).eval()
    tight = model.encode(prompts, padded=False)
    padded = model.encode(prompts, padded=True)
    for prompt, rows, full in zip(prompts, tight, padded):
        batch = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
        with torch.no_grad():
            expected = encoder(**batch).last_hidden_state[0].double().numpy()
        np.testing.assert_allclose(full, expected, atol=1e-5)
        # bidirectional, but masked: the real rows do not depend on the padding
        np.testing.assert_allclose(rows, full[: rows.shape[0]], atol=1e-5)


def test_language_structure_is_real(model):
    """Paraphrases of a name sit closer to it than unrelated text does — what random encoders lack."""
    names = ["Van Gogh", "Vincent van Gogh", "a photo of a cat", "Claude Monet"]
    ids = model.tokenize(names)
    rows = [r[len(i) - 2] for r, i in zip(model.encode(names, padded=False), ids)]
    unit = [r / np.linalg.norm(r) for r in rows]
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2
    assert unit[0] @ unit[1] > unit[0] @ unit[3]


def test_the_diffusers_pipeline_loads_it_offline(minilm_sd1_path, model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(minilm_sd1_path), local_files_only=True, safety_checker=None)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt("Van Gogh", "cpu", 1, False)
    np.testing.assert_allclose(embeds[0].double().numpy(), model.encode(["Van Gogh"], padded=True)[0], atol=1e-5)
