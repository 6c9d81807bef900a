"""``uce`` and ``uce-legacy`` against a plain implementation of the published formula.

The reference below is written independently of erasec, the way the papers' scripts do it:
transformers' tokenizer and text encoder at 77 tokens, the UNet loaded whole by diffusers, and
per layer ``W = mat1 · mat2⁻¹`` with a dense ``torch.linalg.solve`` — in float64 rather than the
scripts' fp32 ``torch.inverse`` (research/perf-baseline.md §5.4: fp32 is off by 0.4 % at one
concept). Only the text encoder runs in float32 on both sides, so ΔW agrees to ~1e-6.
"""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from safetensors.numpy import load_file

from reference_edit import edit

from erasec.compiler.build import build

TOLERANCE = 1e-5  # relative Frobenius error of ΔW, per layer


def _embed(tokenizer, encoder, text):
    """77 rows (float64) and the index of the last subject token: attention_mask.sum() − 2."""
    tokens = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        rows = encoder(tokens.input_ids)[0][0].double()
    return rows, int(tokens.attention_mask.sum()) - 2


def _solve(layers, erase_pairs, preserve_rows, lam, erase_scale, preserve_scale):
    """ΔW per layer of one edit from W0 (``reference_edit.edit``), as numpy."""
    edited = edit(layers, erase_pairs, preserve_rows, lam, erase_scale, preserve_scale)
    return {name: (w - layers[name]).numpy() for name, w in edited.items()}


def _lora_deltas(path):
    tensors = load_file(str(path))
    deltas = {}
    for key in tensors:
        if key.endswith(".lora_down.weight"):
            base = key[: -len(".lora_down.weight")]
            up = tensors[f"{base}.lora_up.weight"].astype(np.float64)
            down = tensors[key].astype(np.float64)
            scale = float(tensors[f"{base}.alpha"]) / down.shape[0]
            deltas[base] = scale * up @ down
    return deltas


def _compare(path, expected):
    deltas = _lora_deltas(path)
    assert len(deltas) == len(expected) == 32
    for name, delta in expected.items():
        got = deltas["lora_unet_" + name.replace(".", "_")]
        error = np.linalg.norm(got - delta) / np.linalg.norm(delta)
        assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


def _write_spec(tmp_path, method, body):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"erasec: 1\nname: ref\nversion: 0.1.0\nmodel: builtin:tiny-sd1\nmethod: {method}\n" + textwrap.dedent(body))
    return spec


def test_uce_matches_the_published_formula(tmp_path, reference_parts):
    tokenizer, encoder, layers = reference_parts
    spec = _write_spec(
        tmp_path,
        "uce",
        """
        erase:
          - {concept: Van Gogh, anchor: art, synonyms: [Vincent van Gogh]}
          - {concept: Kelly McKernan}
        preserve: [Claude Monet, a photo of a cat]
        """,
    )
    build(spec, tmp_path / "uce.safetensors")

    def last(text):
        rows, index = _embed(tokenizer, encoder, text)
        return rows[index]

    pairs = [(last(c), last(g)) for c, g in [("Van Gogh", "art"), ("Vincent van Gogh", "art"), ("Kelly McKernan", "")]]
    preserve = [last(p) for p in ("Claude Monet", "a photo of a cat")]
    _compare(tmp_path / "uce.safetensors", _solve(layers, pairs, preserve, lam=0.5, erase_scale=1.0, preserve_scale=1.0))


def test_uce_legacy_matches_the_original_script(tmp_path, reference_parts):
    tokenizer, encoder, layers = reference_parts
    spec = _write_spec(
        tmp_path,
        "uce-legacy",
        """
        erase:
          - {concept: Van Gogh}
          - {concept: nudity, anchor: a person}
        preserve: [Claude Monet]
        """,
    )
    build(spec, tmp_path / "legacy.safetensors")

    pairs = []
    for old_text, new_text in [("Van Gogh", " "), ("nudity", "a person")]:
        old, i = _embed(tokenizer, encoder, old_text)
        new, j = _embed(tokenizer, encoder, new_text)
        f = max(i, j)
        for key, guide in zip(old[i : 77 - (f - i)], new[j : 77 - (f - j)]):
            pairs.append((key, guide))
    retain = ["", "Claude Monet"]
    preserve = [row for text in retain for row in _embed(tokenizer, encoder, text)[0]]
    expected = _solve(layers, pairs, preserve, lam=0.5, erase_scale=1.0, preserve_scale=max(0.1, 1 / len(retain)))
    _compare(tmp_path / "legacy.safetensors", expected)
