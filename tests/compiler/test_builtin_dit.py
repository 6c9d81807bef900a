"""The diffusion-transformer built-ins (issue 14, deliverable 6): builtin:tiny-flux, tiny-chroma,
tiny-sd3, tiny-wan and minilm-flux are diffusers folders that the real pipeline classes load and run
offline, over a T5 tokenizer made in-process, byte-identical on every build."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest
import torch
from erasec.compiler.errors import ModelError
from erasec.compiler.models import t5_tokenizer
from erasec.compiler.models.builtin import (
    DIT_BUILTIN_MODELS,
    builtin_location,
    builtin_model_path,
)
from transformers import T5TokenizerFast

PIPELINES = {
    "tiny-flux": "FluxPipeline",
    "tiny-chroma": "ChromaPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "tiny-wan": "WanPipeline",
    "minilm-flux": "FluxPipeline",
}
# the class of each text encoder, read back from the loaded pipeline
ENCODERS = {
    "tiny-flux": {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"},
    "tiny-chroma": {"text_encoder": "T5EncoderModel"},
    "tiny-sd3": {
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
    },
    "tiny-wan": {"text_encoder": "UMT5EncoderModel"},
    "minilm-flux": {"text_encoder": "CLIPTextModel", "text_encoder_2": "BertModel"},
}
PROMPT = "A starry night over the countryside, in the style of Van Gogh"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


@pytest.fixture(scope="module")
def pipeline(dit_builtin):
    loaded = {}

    def load(name: str):
        if name not in loaded:
            cls = getattr(diffusers, PIPELINES[name])
            loaded[name] = cls.from_pretrained(dit_builtin(name), local_files_only=True)
        return loaded[name]

    return load


def test_every_dit_builtin_has_a_pipeline_here():
    assert tuple(PIPELINES) == DIT_BUILTIN_MODELS


# -- the T5 tokenizer -------------------------------------------------------------------------------


def test_t5_tokenizer_round_trips_text_pads_with_0_and_ends_with_eos_1(tiny_flux_path):
    tokenizer = T5TokenizerFast.from_pretrained(str(tiny_flux_path / "tokenizer_2"), local_files_only=True)
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1000, 0, 1, 2)
    assert _config(tiny_flux_path, "text_encoder_2")["vocab_size"] == len(tokenizer)
    for text in (PROMPT, "a photo of Claude Monet's garden, 8k", "A black Honda motorcycle parked in front of a garage."):
        encoded = tokenizer(text, padding="max_length", max_length=48, truncation=True)
        ids, length = encoded.input_ids, sum(encoded.attention_mask)
        assert ids[length - 1] == 1 and set(ids[length:]) == {0}, ids
        assert not {0, 1, 2} & set(ids[: length - 1]), ids  # corpus words: no unknown pieces
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    pieces = tokenizer.tokenize(PROMPT)
    assert pieces[:2] == ["▁A", "▁star"] and len(pieces) < len(PROMPT) / 2  # subwords, not characters
    assert 2 in tokenizer("a temple in 京都").input_ids  # characters never seen in training: <unk>


def test_t5_tokenizer_builds_are_byte_identical(tmp_path, tiny_flux_path):
    for name in ("first", "second"):
        t5_tokenizer._packaged_vocab.cache_clear()  # train again, not from this process's cache
        t5_tokenizer.write_t5_tokenizer(tmp_path / name)
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert sorted(first) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert first == second == _files(tiny_flux_path / "tokenizer_2")


# -- the pipelines -----------------------------------------------------------------------------------


def _run(pipe, name: str, steps: int = 1):
    common = {"num_inference_steps": steps, "guidance_scale": 1.0, "max_sequence_length": 16, "output_type": "pt",
              "generator": torch.Generator().manual_seed(0)}
    if name == "tiny-wan":
        return pipe(PROMPT, **common, height=16, width=16, num_frames=5).frames
    size = 16 if name == "tiny-sd3" else 8
    return pipe(PROMPT, **common, height=size, width=size).images


@pytest.mark.parametrize("name", list(PIPELINES))
def test_the_diffusers_pipeline_loads_the_folder_and_runs_a_step_on_cpu(pipeline, name):
    pipe = pipeline(name)
    assert type(pipe).__name__ == PIPELINES[name]
    assert {component: type(getattr(pipe, component)).__name__ for component in ENCODERS[name]} == ENCODERS[name]
    with torch.inference_mode():
        output = _run(pipe, name)
    expected = (1, 5, 3, 16, 16) if name == "tiny-wan" else (1, 3, 16, 16) if name == "tiny-sd3" else (1, 3, 8, 8)
    assert tuple(output.shape) == expected and bool(torch.isfinite(output).all())


def test_tiny_wan_is_wan_2_2_and_both_experts_denoise(pipeline, dit_builtin):
    pipe = pipeline("tiny-wan")
    assert pipe.config.boundary_ratio == 0.875 and pipe.transformer_2 is not None
    first, second = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert first.keys() == second.keys()
    assert not torch.equal(first["blocks.0.attn2.to_k.weight"], second["blocks.0.attn2.to_k.weight"])
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, part).register_forward_hook(lambda *_, part=part: calls.__setitem__(part, calls[part] + 1))
             for part in calls]
    try:
        with torch.inference_mode():
            _run(pipe, "tiny-wan", steps=2)  # two steps: one above the boundary (high noise), one below
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["transformer"] >= 1 and calls["transformer_2"] >= 1, calls


def test_tiny_sd3_zero_pads_the_clip_rows_to_the_t5_width(pipeline, dit_builtin):
    folder = dit_builtin("tiny-sd3")
    width = _config(folder, "transformer")["joint_attention_dim"]
    clip = [_config(folder, part) for part in ("text_encoder", "text_encoder_2")]
    assert width == _config(folder, "text_encoder_3")["d_model"] > sum(c["hidden_size"] for c in clip)
    assert _config(folder, "transformer")["pooled_projection_dim"] == sum(c["projection_dim"] for c in clip)
    pipe = pipeline("tiny-sd3")
    with torch.inference_mode():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False,
                                                   max_sequence_length=16)
    clip_width = sum(c["hidden_size"] for c in clip)
    assert tuple(embeds.shape) == (1, 77 + 16, width) and tuple(pooled.shape) == (1, 64)
    assert bool((embeds[0, :77, clip_width:] == 0).all())  # CLIP-L ⊕ CLIP-G, then zeros
    assert bool((embeds[0, :77, clip_width // 2 : clip_width].abs().sum(-1) > 0).all())  # CLIP-G kept, not cropped
    # the two CLIPs are seeded apart: no two components share weights
    assert not torch.equal(pipe.text_encoder.text_model.embeddings.token_embedding.weight,
                           pipe.text_encoder_2.text_model.embeddings.token_embedding.weight)


def test_minilm_flux_reads_the_pretrained_minilm_rows(pipeline, dit_builtin):
    from erasec.compiler.models.builtin.minilm import minilm_files

    folder = dit_builtin("minilm-flux")
    assert (folder / "text_encoder_2" / "model.safetensors").read_bytes() == (minilm_files() / "model.safetensors").read_bytes()
    assert _config(folder, "transformer")["joint_attention_dim"] == _config(folder, "text_encoder_2")["hidden_size"] == 384
    pipe = pipeline("minilm-flux")
    prompts = ["a painting by Van Gogh", "an artwork by Vincent van Gogh", "a bowl of tomato soup"]
    with torch.inference_mode():
        rows = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=32, device=torch.device("cpu"))
    assert tuple(rows.shape) == (3, 32, 384)
    assert pipe.tokenizer_2(prompts[0]).input_ids[0] == 101 and pipe.tokenizer_2.pad_token_id == 0  # [CLS], [PAD]
    mean = torch.nn.functional.normalize(rows.mean(1), dim=-1)
    paraphrase, unrelated = float(mean[0] @ mean[1]), float(mean[0] @ mean[2])
    assert paraphrase > unrelated + 0.1, (paraphrase, unrelated)  # pretrained: paraphrases lie close


def test_minilm_flux_padding_drowns_the_prompt_as_docs_say(pipeline):
    """docs/models.md: unmasked, 512 pad tokens make unrelated prompts' [CLS] rows near-equal."""
    pipe = pipeline("minilm-flux")
    prompts = ["a painting by Van Gogh", "a bowl of tomato soup"]
    cosine = {}
    with torch.inference_mode():
        for length in (32, 512):
            rows = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=length, device=torch.device("cpu"))
            first = torch.nn.functional.normalize(rows[:, 0], dim=-1)
            cosine[length] = float(first[0] @ first[1])
    assert cosine == {32: pytest.approx(0.66, abs=0.01), 512: pytest.approx(0.98, abs=0.01)}


# -- the cache -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["tiny-flux", *(pytest.param(name, marks=pytest.mark.slow) for name in DIT_BUILTIN_MODELS[1:])]
)
def test_a_rebuild_is_byte_identical_and_leaves_the_rng_alone(name, dit_builtin, tmp_path):
    first = _files(dit_builtin(name))
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    t5_tokenizer._packaged_vocab.cache_clear()
    second = _files(builtin_model_path(name, cache_dir=tmp_path))
    assert torch.equal(torch.rand(3), expected)
    assert sorted(first) == sorted(second) and "model_index.json" in first
    for file in first:
        assert first[file] == second[file], file


def test_the_dits_have_no_single_file_form_yet(tmp_path):
    assert builtin_location("tiny-flux.safetensors", tmp_path) is None
    assert builtin_location("tiny-flux", tmp_path) == tmp_path / "models" / "tiny-flux-v1"
    with pytest.raises(ModelError) as caught:
        builtin_model_path("tiny-sd3.safetensors", cache_dir=tmp_path)
    assert str(caught.value) == (
        "builtin:tiny-sd3.safetensors: the diffusion-transformer built-ins have no single-file form yet; use builtin:tiny-sd3"
    )
    assert not (tmp_path / "models").exists()
