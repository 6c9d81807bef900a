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
