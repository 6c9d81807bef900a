"""builtin:minilm-flux — the semantic test bed for diffusion transformers (issue 14 item 6): a
FLUX-shaped transformer whose ``context_embedder`` reads pretrained MiniLM rows in the T5 slot, so an
erasure can be seen reaching prompts the spec never names.

Movement of a prompt = sqrt(Σ_rows ‖ΔW c‖² / Σ_rows ‖W0 c‖²) over the rows the transformer sees
(docs/results.md's measure, at the context embedder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from erasec.compiler.models.open import open_model
from erasec.patches.link import decode_shared
from erasec.patches.read import read_patch
from safetensors.numpy import load_file

LENGTH = 64  # the example's options.sequence_length (MiniLM was trained with masks: short padding)
PARAPHRASES = (  # carry Van Gogh without naming him; no spec below names them
    "the painter of The Starry Night",
    "sunflowers painted by the Dutch post-impressionist",
    "a swirling night sky over a village with a cypress tree",
    "self-portrait with a bandaged ear",
)
UNRELATED = ("a red sports car on a highway", "a bowl of fruit on a table", "a city skyline at night")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flux-quickstart.yaml"  # the README's FLUX example


@pytest.fixture(scope="module")
def movement(tmp_path_factory):
    from erasec.compiler.models.builtin import builtin_model_path

    root = tmp_path_factory.mktemp("minilm-flux")
    assert f"sequence_length: {LENGTH}" in EXAMPLE.read_text()
    patch = root / "patch.safetensors"
    result = run("build", EXAMPLE, "-o", patch)
    assert result.exit_code == 0, result.output
    folder = builtin_model_path("minilm-flux")
    w0 = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))["context_embedder.weight"]
    w0 = w0.astype(np.float64)
    solution = decode_shared(read_patch(patch).metadata["erasec.shared"])
    delta = solution.spaces[0].delta("context_embedder", w0)
    model = open_model(str(folder), sequence_length=LENGTH)

    def measure(prompt: str) -> float:
        rows = model.encode([prompt], padded=True)[0][: model.seen_rows(len(model.tokenize([prompt])[0]))]
        return float(np.linalg.norm(rows @ delta.T) / np.linalg.norm(rows @ w0.T))

    return measure


def test_the_test_bed_is_flux_shaped_over_minilm_rows():
    model = open_model("builtin:minilm-flux", sequence_length=LENGTH)
    assert model.family == "flux"
    (space,) = model.target.spaces
    assert (space.name, space.dim, [s.module_path for s in space.sites]) == ("minilm", 384, ["context_embedder"])


def test_the_erasure_reaches_paraphrases_no_spec_names(movement):
    paraphrases = [movement(p) for p in PARAPHRASES]
    unrelated = [movement(p) for p in UNRELATED]
    # each paraphrase moves, on average well beyond unrelated text, about as far as the named concept
    assert np.mean(paraphrases) > 1.5 * np.mean(unrelated), (paraphrases, unrelated)
    assert min(paraphrases) > 0.5 * movement("Van Gogh"), paraphrases
