"""Recorded text-encoder outputs: what a linked patch carries (``output.link``) and replays.

A build with ``output.link: true`` wraps its model in ``RecordingModel``; every row the lowering
asks the text encoder for is kept and stored as ``erasec.link`` (``patches/link.py``).
``compose`` and ``retarget`` wrap a model in ``ReplayModel`` instead, which answers ``encode``
from those records: lowering the union of two specs then gives exactly the rows a fresh build of
the union spec would, without running the encoder. Everything else (target, K/V weights,
tokenizer) is the wrapped model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import BuildError
from .protocol import TextModel
from .wrapper import ModelWrapper


class RecordingModel(ModelWrapper):
    """A model whose ``encode`` results are recorded in ``encodings``, keyed by (prompt, padded)."""

    def __init__(self, model: TextModel) -> None:
        super().__init__(model)
        self.encodings: dict[tuple[str, bool], np.ndarray] = {}

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        """Prompts seen before are answered from the record (a memo: ``erasec eval`` and the
        benchmarks lower the same prompts many times); only new ones reach the text encoder."""
        missing = [p for p in dict.fromkeys(prompts) if (p, padded) not in self.encodings]
        for prompt, array in zip(missing, self.inner.encode(missing, padded=padded)):
            self.encodings[(prompt, padded)] = array
        return [self.encodings[(prompt, padded)] for prompt in prompts]


class ReplayModel(ModelWrapper):
    """A model whose ``encode`` answers from recorded encodings and never runs the text encoder."""

    def __init__(self, model: TextModel, encodings: Mapping[tuple[str, bool], np.ndarray], where: str) -> None:
        super().__init__(model)
        self.encodings = dict(encodings)
        self._where = where

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        missing = [prompt for prompt in prompts if (prompt, padded) not in self.encodings]
        if missing:
            raise BuildError(
                f"{self._where}: the patches recorded no encoding of {missing[0]!r}"
                f"{' (padded)' if padded else ''}; rebuild from the spec instead"
            )
        return [self.encodings[(prompt, padded)] for prompt in prompts]
