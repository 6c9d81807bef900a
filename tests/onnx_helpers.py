"""Plain helpers of the ONNX parity fixtures (tests/compiler/conftest.py) and tests: the parity spec,
a PyTorch UNet's output and an ONNX graph's output on the same feeds. onnx and torch load on first use."""

from __future__ import annotations

import numpy as np

from cli_helpers import KELLY, VAN_GOGH, spec_text

PARITY_SPEC = spec_text(name="onnx-parity", erase=(VAN_GOGH, KELLY))


def parity_spec(model: str) -> str:
    """The parity spec on ``model``; SDXL's with ``options.pooled``, so the Gemm site is patched too."""
    text = PARITY_SPEC.replace("builtin:tiny-sd1", f"builtin:{model}")
    return text + "options: {pooled: true}\n" if model == "tiny-sdxl" else text


def unet_output(unet, feeds: dict) -> np.ndarray:
    """A diffusers UNet's output on torch ``feeds`` (SDXL's added conditions when ``time_ids`` is there)."""
    added = {"added_cond_kwargs": {k: feeds[k] for k in ("text_embeds", "time_ids")}} if "time_ids" in feeds else {}
    return unet(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"], **added).sample.numpy()


def onnx_output(path, feeds, **kwargs) -> np.ndarray:
    """The graph at ``path`` run once on CPU (``run_step``'s options as keywords); its first output."""
    from erasec.backends.onnx.runtime import open_session, run_step

    session = open_session(path, ["CPUExecutionProvider"])
    return run_step(session, feeds, **kwargs)[0]


DIT_MODELS = {"flux": "tiny-flux", "chroma": "tiny-chroma", "sd3": "tiny-sd3", "wan": "tiny-wan"}


def dit_parity_spec(model: str) -> str:
    """The DiT parity spec on ``model``: a PEFT patch (what diffusers loads), 8 T5 rows; FLUX and SD3
    edit their pooled ``linear_1`` too, so the Gemm site is patched beside ``context_embedder``."""
    pooled = "  pooled: true\n" if model in ("tiny-flux", "tiny-sd3") else ""
    return (
        f"erasec: 1\nname: onnx-dit-parity\nversion: 1.0.0\nmodel: builtin:{model}\nmethod: uce\n"
        "erase:\n  - {concept: Van Gogh, anchor: a painter}\n  - {concept: Kelly McKernan, anchor: an artist}\n"
        "preserve: [Claude Monet]\n"
        f"options:\n  sequence_length: 8\n{pooled}"
    )


def transformer_output(transformer, feeds: dict) -> np.ndarray:
    """A diffusers transformer's output on numpy ``feeds`` named as its graph's inputs."""
    import torch

    with torch.no_grad():
        inputs = {name: torch.from_numpy(value) for name, value in feeds.items()}
        return transformer(**inputs, return_dict=False)[0].numpy()
