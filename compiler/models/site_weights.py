"""``SiteWeights``: the ``TextModel`` members an opened model answers from the file holding its edited
sites — their weights, Gram, storage dtype and pins — written once for ``sd.SDModel`` and
``dit.DiTModel``. A class using it has ``_file`` (the ``TensorFile``), ``weight_name(site)``,
``target``, ``location`` and ``_loaded.kv`` (the memo)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from erasec.ir import KeySpace

from . import grams, pins
from .tensor_files import LazyWeights

KV_CACHE_BYTES = 512 * 2**20


class SiteWeights:
    __slots__ = ()

    def kv_weights(self) -> Mapping[str, np.ndarray]:
        """module_path -> read-only float32 (out, in) weight of every edited site; half-precision files
        are upcast exactly.

        Held in memory when all of them take at most ``KV_CACHE_BYTES`` in fp32 (SD1/SD2: 0.2 GB);
        otherwise read from the file on each access, one at a time — SDXL's 140 matrices would take
        1.4 GB beside the text encoders (docs/performance.md).
        """
        weights = LazyWeights(
            self._file, {site.module_path: (self.weight_name(site), site.in_features) for site in self.target.sites}
        )
        if sum(4 * site.out_features * site.in_features for site in self.target.sites) > KV_CACHE_BYTES:
            return weights
        if self._loaded.kv is None:
            self._loaded.kv = dict(weights.items())
        return dict(self._loaded.kv)

    def site_gram(self, space: KeySpace, roles: Sequence[str]) -> np.ndarray:
        """``Σ_l W0_lᵀ W0_l`` over ``space``'s sites whose role is in ``roles`` (``grams.site_gram``)."""
        return grams.site_gram(self.kv_weights(), space, roles, self.location)

    def storage_dtype(self) -> str | None:
        return pins.storage_dtype(self)

    def base_pin(self, module_paths: Sequence[str]) -> dict:
        return pins.model_base_pin(self, module_paths)

    def text_encoder_pin(self) -> dict | None:
        return pins.model_text_encoder_pin(self)
