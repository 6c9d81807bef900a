"""Real-client exactness: diffusers' own LoRA loader applies exactly W0 + ΔW.

The file is loaded with ``StableDiffusionPipeline.load_lora_weights`` and fused at scale 1.0, as
a diffusers user would; every attn2 to_k/to_v must equal W0 + ΔW to 1e-5 relative (fp32), where
ΔW comes from the compiler's float64 solution, and every other weight must be bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasec.compiler.build import build
from erasec.compiler.lowering import Lowering
from erasec.compiler.model import SD1Model
from erasec.compiler.spec import load_spec
from erasec.passes.pipeline import Pipeline
from erasec.passes.presets import PRESETS

SPEC = """\
erasec: 1
name: exact
version: 1.0.0
model: builtin:tiny-sd1
method: {method}
erase:
  - {{concept: Van Gogh, anchor: art, templates: ["a painting by {{}}"]}}
  - {{concept: Kelly McKernan}}
preserve: [Claude Monet]
output: {{dtype: fp32}}
"""


def _expected_deltas(spec_path):
    spec = load_spec(spec_path, methods=tuple(PRESETS))
    model = SD1Model.open(spec.model)
    program = Pipeline.parse(PRESETS[spec.method].pipeline).apply(Lowering(model).lower(spec, PRESETS[spec.method]))
    weights = model.kv_weights()
    solution = program.solution.spaces[0]
    return {path: solution.delta(path, weights[path]) for path in weights}


@pytest.mark.parametrize("method", ["uce", "uce-legacy"])
def test_diffusers_fuses_exactly_w0_plus_delta(tmp_path, tiny_sd1_path, method):
    from diffusers import StableDiffusionPipeline

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(method=method))
    patch = tmp_path / "patch.safetensors"
    build(spec, patch)
    expected = _expected_deltas(spec)

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd1_path, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    before = {
        f"{part}.{k}": v.detach().clone()
        for part, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
        for k, v in module.state_dict().items()
    }
    pipe.load_lora_weights(str(tmp_path), weight_name="patch.safetensors", adapter_name="erase")
    pipe.fuse_lora(lora_scale=1.0, components=["unet", "text_encoder"])
    pipe.unload_lora_weights()
    after = {
        f"{part}.{k}": v.detach()
        for part, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
        for k, v in module.state_dict().items()
    }
    assert sorted(after) == sorted(before)

    edited = {f"unet.{path}.weight": path for path in expected}
    assert len(edited) == 32
    for key, value in after.items():
        if key in edited:
            w0 = before[key].double().numpy()
            want = w0 + expected[edited[key]]
            error = np.linalg.norm(value.double().numpy() - want) / np.linalg.norm(want)
            assert error < 1e-5, f"{key}: relative error {error:.2e}"
            assert np.linalg.norm(expected[edited[key]]) > 1e-3 * np.linalg.norm(w0), "the edit is not trivial"
        else:
            assert torch.equal(value, before[key]), f"{key} changed"
