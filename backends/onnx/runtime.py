"""``erasec run-onnx``: an ONNX Runtime session on the best execution provider, one denoising step.

Providers are tried in the order TensorRT → CUDA → CPU, keeping those this ONNX Runtime build
offers (``onnxruntime-gpu`` has the first two, research/ecosystem.md §4.6). ORT quietly drops a
provider whose libraries fail to load, so what *ran* is read back from the session, not assumed.
A switchable graph is run with its ``erase_scale`` input; an ``.onnx_adapter`` is activated through
``RunOptions.add_active_adapter`` (§4.4 (c); adapters do not apply to IOBinding runs).

An SDXL graph (inputs ``text_embeds`` and ``time_ids``, optimum's names) gets seeded normal
``text_embeds`` like the encoder states, and the ``time_ids`` an SDXL pipeline makes for an
uncropped image of 8 × the latent size: ``[h, w, 0, 0, h, w]`` (original size, crop top-left,
target size); five ids (the refiner) end with the aesthetic score 6.0 instead of the target size.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from erasec.backends.errors import BackendError


PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def choose_providers(available: Sequence[str], wanted: Sequence[str] | None = None) -> list[str]:
    """The wanted providers (default: TensorRT, CUDA, CPU) that ``available`` has, in order."""
    wanted = tuple(wanted) if wanted else PREFERRED_PROVIDERS
    unknown = [name for name in wanted if name not in available]
    if wanted is not PREFERRED_PROVIDERS and unknown:
        raise BackendError(f"--provider: {unknown[0]} is not available here; available: {', '.join(available)}")
    chosen = [name for name in wanted if name in available]
    if not chosen:
        raise BackendError(f"onnxruntime offers none of {', '.join(wanted)}; available: {', '.join(available)}")
    return chosen


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OnnxSession:
    path: Path
    session: object  # onnxruntime.InferenceSession
    requested: tuple[str, ...]
    providers: tuple[str, ...]  # what the session registered, best first

    @property
    def provider(self) -> str:
        return self.providers[0]

    def input_names(self) -> set[str]:
        session = self.session
        return {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}


def open_session(path: str | Path, providers: Sequence[str] | None = None) -> OnnxSession:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BackendError(f"{path}: no such ONNX file")
    requested = choose_providers(ort.get_available_providers(), providers)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the overridable-initializer notes are expected
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as error:  # ORT raises its own Fail/InvalidGraph types: add where, keep the text
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackendError(f"{path}: ONNX Runtime cannot load it ({first})") from error
    return OnnxSession(path=path, session=session, requested=tuple(requested), providers=tuple(session.get_providers()))


def sdxl_time_ids(height: int, width: int, count: int) -> np.ndarray:
    """One image's ``time_ids`` (module docstring), ``height``/``width`` in pixels."""
    if count == 6:
        return np.array([height, width, 0, 0, height, width], dtype=np.float64)
    if count == 5:
        return np.array([height, width, 0, 0, 6.0], dtype=np.float64)
    raise BackendError(f"time_ids: {count} ids per image; SDXL base has 6, the refiner 5")


def unet_inputs(session: OnnxSession, *, batch: int = 2, size: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded example inputs for a UNet graph: latents, one timestep, encoder states (77 tokens);
    for SDXL also ``text_embeds`` and ``time_ids`` (module docstring)."""
    rng = np.random.default_rng(seed)
    inputs = {i.name: i for i in session.session.get_inputs()}
    missing = [name for name in ("sample", "timestep", "encoder_hidden_states") if name not in inputs]
    if missing:
        raise BackendError(f"{session.path}: not a UNet graph (no input {missing[0]!r}); erasec export-onnx makes one")

    def dims(name: str, fallback: Sequence[int]) -> list[int]:
        shape = inputs[name].shape
        return [d if isinstance(d, int) and d > 0 else f for d, f in zip(shape, fallback)]

    sample_shape = dims("sample", (batch, 4, size or 64, size or 64))
    if size is not None:
        sample_shape[2:] = [size, size]
    states_shape = dims("encoder_hidden_states", (sample_shape[0], 77, 768))
    timestep_shape = [1] if inputs["timestep"].shape else []  # optimum's export takes a scalar timestep
    feeds = {
        "sample": rng.standard_normal(sample_shape).astype(_NUMPY.get(inputs["sample"].type, np.float32)),
        "timestep": np.full(timestep_shape, 981.0, dtype=_NUMPY.get(inputs["timestep"].type, np.float32)),
        "encoder_hidden_states": rng.standard_normal(states_shape).astype(
            _NUMPY.get(inputs["encoder_hidden_states"].type, np.float32)
        ),
    }
    if "text_embeds" in inputs or "time_ids" in inputs:
        for name in ("text_embeds", "time_ids"):
            if name not in inputs or not isinstance(inputs[name].shape[-1], int):
                raise BackendError(f"{session.path}: an SDXL UNet graph needs input {name!r} with a fixed last dimension")
        embeds_shape = dims("text_embeds", (sample_shape[0], 1280))
        time_ids = sdxl_time_ids(8 * sample_shape[2], 8 * sample_shape[3], inputs["time_ids"].shape[-1])
        feeds["text_embeds"] = rng.standard_normal(embeds_shape).astype(_NUMPY.get(inputs["text_embeds"].type, np.float32))
        feeds["time_ids"] = np.tile(time_ids, (sample_shape[0], 1)).astype(_NUMPY.get(inputs["time_ids"].type, np.float32))
    return feeds


TRANSFORMER_TEXT_ROWS = 77  # encoder rows fed to a transformer graph whose sequence length is symbolic


def _family_of_transformer(inputs: dict) -> str | None:
    """A transformer graph's family from its inputs (export_transformer.py's names, optimum's for FLUX/SD3)."""
    if "hidden_states" not in inputs or "encoder_hidden_states" not in inputs:
        return None
    if "img_ids" in inputs:
        return "flux" if "pooled_projections" in inputs else "chroma"
    return {4: "sd3", 5: "wan"}.get(len(inputs["hidden_states"].shape))


def transformer_inputs(session: OnnxSession, *, batch: int = 1, size: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded example inputs for a diffusion transformer graph, as its pipeline makes them: latents of
    ``size`` × ``size`` (default 32; FLUX and Chroma pack 2 × 2 of them per image token, with
    ``FluxPipeline``'s image ids), standard-normal encoder rows (77 where the length is symbolic; zero
    text ids), the pooled vector, a timestep (FLUX and Chroma take ``t / 1000``), FLUX-dev's guidance
    3.5, Chroma's all-true attention mask; Wan's latents have 2 frames. Fixed dimensions are the graph's."""
    rng = np.random.default_rng(seed)
    inputs = {i.name: i for i in session.session.get_inputs()}
    family = _family_of_transformer(inputs)
    if family is None:
        raise BackendError(f"{session.path}: neither a UNet nor a transformer graph (no input 'sample' or 'hidden_states')")

    def dims(name: str, fallback: Sequence[int]) -> list[int]:
        return [d if isinstance(d, int) and d > 0 else f for d, f in zip(inputs[name].shape, fallback)]

    def normal(name: str, shape) -> np.ndarray:
        return rng.standard_normal(shape).astype(_NUMPY.get(inputs[name].type, np.float32))

    size = size or 32
    batch = dims("hidden_states", (batch,))[0]
    rows = dims("encoder_hidden_states", (batch, TRANSFORMER_TEXT_ROWS, 1))
    feeds: dict[str, np.ndarray] = {}
    if family in ("flux", "chroma"):
        height = width = size // 2
        states = dims("hidden_states", (batch, height * width, 1))
        if states[1] != height * width:  # a fixed token count: a square of it
            height = width = round(states[1] ** 0.5)
        ids = np.zeros((height, width, 3))
        ids[..., 1], ids[..., 2] = np.arange(height)[:, None], np.arange(width)[None, :]
        feeds["hidden_states"] = normal("hidden_states", states)
        feeds["img_ids"] = ids.reshape(-1, 3).astype(np.float32)
        feeds["txt_ids"] = np.zeros((rows[1], 3), dtype=np.float32)
        timestep = 0.981
    else:
        fallback = (batch, 1, size, size) if family == "sd3" else (batch, 1, 2, size, size)
        feeds["hidden_states"] = normal("hidden_states", dims("hidden_states", fallback))
        timestep = 981.0
    feeds["encoder_hidden_states"] = normal("encoder_hidden_states", rows)
    feeds["timestep"] = np.full((batch,), timestep, dtype=_NUMPY.get(inputs["timestep"].type, np.float32))
    if "pooled_projections" in inputs:
        feeds["pooled_projections"] = normal("pooled_projections", dims("pooled_projections", (batch, 1)))
    if "guidance" in inputs:
        feeds["guidance"] = np.full((batch,), 3.5, dtype=_NUMPY.get(inputs["guidance"].type, np.float32))
    if "attention_mask" in inputs:
        feeds["attention_mask"] = np.ones((batch, rows[1] + feeds["hidden_states"].shape[1]), dtype=bool)
    return feeds


def example_inputs(session: OnnxSession, *, seed: int = 0, size: int | None = None) -> dict[str, np.ndarray]:
    """``unet_inputs`` for a UNet graph (input ``sample``), else ``transformer_inputs``."""
    if "sample" in {i.name for i in session.session.get_inputs()}:
        return unet_inputs(session, seed=seed, size=size)
    return transformer_inputs(session, seed=seed, size=size)


def run_step(
    session: OnnxSession,
    feeds: dict[str, np.ndarray],
    *,
    erase_scale: float | None = None,
    adapter: str | Path | None = None,
    repeat: int = 1,
) -> tuple[np.ndarray, list[float]]:
    """One UNet or transformer evaluation (the noise prediction of one denoising step), ``repeat`` times;
    returns the output and each run's seconds."""
    import onnxruntime as ort

    feeds = dict(feeds)
    if erase_scale is not None:
        if "erase_scale" not in session.input_names():
            raise BackendError(f"{session.path}: the graph has no erase_scale input; patch it with --mode switchable")
        feeds["erase_scale"] = np.array([erase_scale], dtype=np.float32)
    run_options = None
    if adapter is not None:
        adapter = Path(adapter)
        if not adapter.is_file():
            raise BackendError(f"{adapter}: no such adapter file")
        lora = ort.LoraAdapter()
        lora.Load(str(adapter))
        run_options = ort.RunOptions()
        run_options.add_active_adapter(lora)
    seconds = []
    output = None
    for _ in range(max(1, repeat)):
        clock = time.perf_counter()
        output = session.session.run(None, feeds, run_options=run_options)[0]
        seconds.append(time.perf_counter() - clock)
    return output, seconds


def run_onnx(
    path: str | Path,
    *,
    providers: Sequence[str] | None = None,
    erase_scale: float | None = None,
    adapter: str | Path | None = None,
    seed: int = 0,
    size: int | None = None,
    repeat: int = 1,
) -> dict:
    """Open ``path`` (a UNet or transformer graph, or an export-onnx folder), run one step; a JSON-able summary."""
    path = Path(path)
    if path.is_dir():
        path = next((path / c / "model.onnx" for c in ("unet", "transformer") if (path / c).is_dir()), path / "unet" / "model.onnx")
    session = open_session(path, providers)
    output, seconds = run_step(
        session, example_inputs(session, seed=seed, size=size), erase_scale=erase_scale, adapter=adapter, repeat=repeat
    )
    return {
        "graph": str(path),
        "output": session.session.get_outputs()[0].name,
        "provider": session.provider,
        "providers": list(session.providers),
        "requested": list(session.requested),
        "output_shape": list(output.shape),
        "output_mean_abs": float(np.mean(np.abs(output))),
        "finite": bool(np.isfinite(output).all()),
        "erase_scale": erase_scale,
        "adapter": None if adapter is None else str(adapter),
        "runs": len(seconds),
        "median_ms": 1000 * statistics.median(seconds),
    }
