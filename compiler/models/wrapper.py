"""``ModelWrapper``: a ``TextModel`` that forwards every member of the protocol to the model it wraps,
each by name. The caching and recording wrappers subclass it and replace what they change; because
nothing is forwarded implicitly (no ``__getattr__``), a member added to ``TextModel`` must be added
here too, and tests/compiler/test_model_protocol.py fails until it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from erasec.backends.checkpoint import CheckpointSource
from erasec.ir import KeySpace, ModelTarget

from .protocol import TextModel


class ModelWrapper:
    """Forwards every ``TextModel`` member to ``inner``."""

    def __init__(self, inner: TextModel) -> None:
        self.inner = inner

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def target(self) -> ModelTarget:
        return self.inner.target

    @property
    def family(self) -> str:
        return self.inner.family

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        return self.inner.tokenize(prompts)

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        return self.inner.encode(prompts, padded=padded)

    def encode_pooled(self, prompts: Sequence[str]) -> list[np.ndarray]:
        return self.inner.encode_pooled(prompts)

    @property
    def padded_rows(self) -> int:
        return self.inner.padded_rows

    @property
    def sequence_length(self) -> int | None:
        return self.inner.sequence_length

    @property
    def component(self) -> str:
        return self.inner.component

    def seen_rows(self, tokens: int) -> int:
        return self.inner.seen_rows(tokens)

    def kv_weights(self) -> Mapping[str, np.ndarray]:
        return self.inner.kv_weights()

    def site_gram(self, space: KeySpace, roles: Sequence[str]) -> np.ndarray:
        return self.inner.site_gram(space, roles)

    def storage_dtype(self) -> str | None:
        return self.inner.storage_dtype()

    def base_pin(self, module_paths: Sequence[str]) -> dict:
        return self.inner.base_pin(module_paths)

    def text_encoder_pin(self) -> dict | None:
        return self.inner.text_encoder_pin()

    def checkpoint_source(self) -> CheckpointSource:
        return self.inner.checkpoint_source()

    def release_text_encoders(self) -> None:
        self.inner.release_text_encoders()
