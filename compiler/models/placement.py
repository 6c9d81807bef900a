"""Where a build runs its text encoders, in which precision, and how many prompts a pass holds
(issue 14 item 7: ``--device``, ``--encoder-dtype``, ``--encode-batch``).

Two paths compute the same rows (equal to fp32 rounding; docs/performance.md, "Builds on a GPU"):

* **the CPU path** (``Placement()``: ``cpu``, fp32, one prompt per pass) — the default without a GPU.
  Each prompt is encoded in a pass of its own on one torch thread (``embedding_cache``), so a patch
  is byte-identical at any thread count and whatever the embedding cache held.
* **the device path** — any other placement: the encoders are moved to the device (``cuda``, or
  the CPU itself when asked with ``--encode-batch``) in ``dtype``, and the prompts go through them
  ``batch`` at a time. Every pass has one shape (``batch`` prompts, padded to the model's full
  length; a short last batch is filled with filler prompts whose rows are dropped), so a prompt's
  rows are computed by the same kernels whatever company it keeps — which is what makes the rows
  cacheable and a patch byte-identical per device kind (and batch, dtype, device model and
  software). On CUDA, TF32 is turned off while an encoder runs (``allow_tf32`` for matmul and
  cuDNN, ``set_float32_matmul_precision("highest")``): TF32 keeps 10 mantissa bits, and its row
  error would reach ΔW amplified by the solve's condition (research/perf-baseline.md §5.4).

Rows come back to the host as float64, and the moments and the solve run there in float64 as on
the CPU path. ``bf16`` is the explicit lower precision: the encoders' weights and activations in
bfloat16 (8 mantissa bits), the rows widened to fp32 on the device; its effect on a patch is
measured in docs/performance.md.

The patch records the placement (``erasec.device``, patches/manifest.py), and the embedding cache
keys rows by it when it is not the CPU path's (rows from different devices are not bit-equal).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..errors import BuildError

DEVICES = ("auto", "cpu", "cuda")
ENCODER_DTYPES = ("fp32", "bf16")
GPU_BATCH = 32  # prompts per pass on a GPU: T5-XXL at 512 rows needs < 5 GB of activations at 64 (research/dit.md §5)
_FILLER = "erasec batch filler {}"

Kind = Literal["cpu", "cuda"]
EncoderDtype = Literal["fp32", "bf16"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeOptions:
    """What the user asked for: ``device`` auto|cpu|cuda (auto: CUDA when torch sees a GPU),
    ``dtype`` fp32|bf16, ``batch`` prompts per pass (None: 1 on the CPU, ``GPU_BATCH`` on CUDA)."""

    device: str = "auto"
    dtype: str = "fp32"
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise BuildError(f"--device: {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.dtype not in ENCODER_DTYPES:
            raise BuildError(f"--encoder-dtype: {self.dtype!r} is not one of {', '.join(ENCODER_DTYPES)}")
        if self.batch is not None and (isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1):
            raise BuildError(f"--encode-batch: {self.batch!r} is not a number of prompts; give 1 or more")

    def resolve(self) -> Placement:
        """The placement these options name on this machine; ``cuda`` without a GPU is refused."""
        kind = self.device
        if kind != "cpu":  # torch loads only to look for a GPU
            import torch

            available = torch.cuda.is_available()
        if kind == "auto":
            kind = "cuda" if available else "cpu"
        elif kind == "cuda" and not available:
            raise BuildError(
                f"--device cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        batch = self.batch if self.batch is not None else (GPU_BATCH if kind == "cuda" else 1)
        return Placement(kind=kind, dtype=self.dtype, batch=batch)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where and how the encoders run (module docstring); ``Placement()`` is the CPU path."""

    kind: Kind = "cpu"
    dtype: EncoderDtype = "fp32"
    batch: int = 1

    @property
    def cpu_path(self) -> bool:
        """The byte-identical CPU path: fp32 on the CPU, one prompt per pass."""
        return self == CPU_PATH

    @property
    def per_prompt(self) -> bool:
        """Prompts are encoded one per pass on one torch thread each (the CPU path's scheduling;
        also a bf16 encoder on the CPU with the default batch)."""
        return self.kind == "cpu" and self.batch == 1

    def as_dict(self) -> dict:
        """What ``erasec.device`` records and the cache keys hold."""
        return {"kind": self.kind, "dtype": self.dtype, "batch": self.batch}

    def place(self, encoder):
        """``encoder`` (a torch text encoder) as this placement runs it: itself on the CPU path, else
        moved to the device in ``dtype`` and wrapped so its inputs go there and its outputs come back."""
        if self.cpu_path:
            return encoder
        import torch

        from .text_encoders import without_fp32_compute

        encoder = without_fp32_compute(encoder)  # its hooks would widen into a host workspace
        dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float32
        return OnDevice(encoder.to(device=self.kind, dtype=dtype).eval(), self.kind)

    def fill(self, prompts: list[str]) -> list[str]:
        """``prompts`` (distinct, at most ``batch``) and as many filler prompts as make a full batch:
        every pass has one shape (module docstring). Fillers are distinct from the prompts."""
        fillers = (_FILLER.format(index) for index in range(len(prompts) + self.batch))
        taken = set(prompts)
        return prompts + [f for f in fillers if f not in taken][: self.batch - len(prompts)]


CPU_PATH = Placement()


def placed(model, placement: Placement):
    """An opened model (``SDModel``, ``DiTModel``) whose encoders load onto ``placement``."""
    return model if placement.cpu_path else dataclasses.replace(model, placement=placement)


def placement_of(model) -> Placement:
    """Where ``model``'s encoders run, through any wrappers (``inner``): what a ``CachingModel`` over
    it batches and keys its entries by, whoever made it."""
    while not hasattr(model, "placement") and hasattr(model, "inner"):
        model = model.inner
    return getattr(model, "placement", CPU_PATH)


@contextlib.contextmanager
def full_fp32_matmuls():
    """TF32 off for matmuls and cuDNN, float32 matmul precision "highest"; restored after."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


class OnDevice:
    """A text encoder on a device: tensor inputs are moved there, every output tensor comes back to
    the host (floating ones widened to fp32), and it runs with full fp32 matmuls. It offers what the
    models ask of an encoder (``config``, ``parameters``, ``buffers``, ``eval``; ``replica`` copies it)."""

    def __init__(self, encoder, device: str) -> None:
        self.encoder = encoder
        self.device = device

    @property
    def config(self):
        return self.encoder.config

    def parameters(self):
        return self.encoder.parameters()

    def buffers(self):
        return self.encoder.buffers()

    def eval(self) -> OnDevice:
        self.encoder.eval()
        return self

    def __call__(self, *args, **kwargs):
        args = tuple(_to(value, self.device) for value in args)
        kwargs = {name: _to(value, self.device) for name, value in kwargs.items()}
        with full_fp32_matmuls():
            output = self.encoder(*args, **kwargs)
        return _to_host(output)


def _to(value, device: str):
    import torch

    return value.to(device) if isinstance(value, torch.Tensor) else value


def _to_host(value):
    """A model output with every tensor on the host, floating ones in fp32 (bf16 widens exactly)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.to(torch.float32) if value.is_floating_point() else value
        return value.to("cpu")
    if isinstance(value, tuple) and not hasattr(value, "keys"):
        return tuple(_to_host(item) for item in value)
    if hasattr(value, "keys"):  # a transformers ModelOutput (an ordered dict of its set fields)
        return type(value)(**{key: _to_host(item) for key, item in value.items()})
    return value
