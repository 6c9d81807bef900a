"""``TextModel``: the one interface an opened model offers to the lowering, the build and its emit
step, evaluation and the patch tools.

It is what those callers use and nothing more: the target they edit, the text encoder's rows, the
K/V weights and their Gram, the pins a patch records, and where a merged checkpoint copies the base
from. ``sd.SDModel`` implements it for the SD families; ``embedding_cache.CachingModel``,
``recording.RecordingModel`` and ``recording.ReplayModel`` wrap any ``TextModel`` and implement every
member explicitly (tests/compiler/test_model_protocol.py checks both), so a caller never probes a
model with ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from erasec.backends.checkpoint import CheckpointSource
from erasec.ir import KeySpace, ModelTarget


@runtime_checkable
class TextModel(Protocol):
    @property
    def location(self) -> str:
        """Where the model was opened from, as the user gave it (messages name it)."""

    @property
    def target(self) -> ModelTarget:
        """The key spaces and their K/V sites."""

    @property
    def family(self) -> str:
        """A name in ``families.FAMILIES``."""

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids with BOS and EoT, unpadded, truncated to the context."""

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        """Read-only float64 key rows per prompt, in the caller's order."""

    def encode_pooled(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Read-only float64 pooled rows, one per prompt (families with a pooled path)."""

    @property
    def padded_rows(self) -> int:
        """Rows of a padded prompt (``encode(padded=True)``): 77 for SD, the T5 length for a DiT."""

    @property
    def sequence_length(self) -> int | None:
        """A diffusion transformer's T5 padding, the rows ``encode(padded=True)`` computes (a patch
        records it); None for SD, whose padding is CLIP's fixed 77."""

    @property
    def component(self) -> str:
        """The folder of the edited denoiser: ``unet``, ``transformer``, or Wan 2.2's second expert
        ``transformer_2`` (its own weights and text embedder; a Wan patch records which)."""

    def seen_rows(self, tokens: int) -> int:
        """How many leading rows of a padded prompt of ``tokens`` ids the denoiser attends to."""

    def kv_weights(self) -> Mapping[str, np.ndarray]:
        """module_path → read-only float32 (out, in) weight of every site."""

    def site_gram(self, space: KeySpace, roles: Sequence[str]) -> np.ndarray:
        """``Σ_l W0_lᵀ W0_l`` in float64 over ``space``'s sites whose role is in ``roles``."""

    def storage_dtype(self) -> str | None:
        """How the file stores the K/V tensors (``fp16``…), or None if unknown or mixed."""

    def base_pin(self, module_paths: Sequence[str]) -> dict:
        """The ``patches.pin.base_pin`` of the tensors at ``module_paths``."""

    def text_encoder_pin(self) -> dict | None:
        """The ``patches.pin.text_encoder_pin`` of the text encoders, or None for a layout without one."""

    def checkpoint_source(self) -> CheckpointSource:
        """Where a merged checkpoint (``output.format: checkpoint``, ``erasec apply``) copies the base from."""

    def release_text_encoders(self) -> None:
        """Drop the loaded text encoders once every row is encoded; they load again if asked."""
