"""A content-addressed cache of text-encoder rows, so a rebuild after a spec edit encodes only the
prompts it has not seen (issue 8; research/perf-baseline.md §7: a build is text-encoder-bound, > 97 %
of its time at N ≥ 100).

An entry's key is the SHA-256 of: the text-encoder pin (``compiler.pins``: a digest of every
encoder weight, so another checkpoint with the same encoder shares entries), the family's encoders
(component, hidden state, pad token), what is encoded (``rows`` or ``pooled``), ``padded``, the
prompt's token ids (so the tokenizer is part of the key) and the prompt. The value is the rows as
``.npy``, in float32 when that is exact (the encoders compute in float32), else float64.

The pin itself costs a read of the whole encoder (≈ 6 s for CLIP-L under load, measured in
docs/performance.md); it is memoised under the files' (path, size, mtime) like git's index, so only
the first build against an encoder file pays it. Two other per-model costs are memoised the same way
under the K/V weights file's stamp: the site Gram Σ W0ᵀW0 (``grams/``; SDXL's 140 matrices) and the
patch's base pin (``pins/``).

``CachingModel`` wraps a model (as ``encodings.RecordingModel`` does) and passes its misses to the
model's ``encode`` in one call, so a cold build encodes exactly as an uncached one. A warm rebuild
encodes only the new prompts, in smaller batches; CLIP's rows do not depend on the other prompts of
a batch in exact arithmetic, and in float32 they agreed to the bit in the tests
(tests/compiler/test_embedding_cache.py), though that is the BLAS's behaviour, not a guarantee.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .builtin import cache_root
from .errors import BuildError
from .pins import model_base_pin, model_text_encoder_pin, text_encoder_tensors

CACHE_VERSION = 1
FOLDER = "embeddings"


@dataclass(frozen=True, slots=True)
class CacheInfo:
    root: Path
    entries: int
    bytes: int

    def as_dict(self) -> dict:
        return {"root": str(self.root), "entries": self.entries, "bytes": self.bytes}


class EmbeddingCache:
    """``.npy`` files under ``<erasec cache dir>/embeddings``, named by their key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def at(cls, cache_dir: Path | None = None) -> EmbeddingCache:
        return cls(cache_root(cache_dir) / FOLDER)

    def _path(self, key: str, kind: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npy"

    def get(self, key: str, kind: str = "rows") -> np.ndarray | None:
        """The array stored under ``key`` (``kind``: ``rows``, or ``grams`` for site Grams), or None."""
        try:
            array = np.load(self._path(key, kind), allow_pickle=False)
        except (OSError, ValueError):  # absent, or a torn file from a killed writer: encode again
            return None
        array = array.astype(np.float64)
        array.flags.writeable = False
        return array

    def put(self, key: str, array: np.ndarray, kind: str = "rows") -> None:
        narrow = array.astype(np.float32)
        value = narrow if np.array_equal(narrow.astype(np.float64), array) else np.asarray(array, np.float64)
        self._atomic_write(self._path(key, kind), lambda stream: np.save(stream, value, allow_pickle=False))

    def pin_memo(self, stamp: str) -> dict | None:
        try:
            return json.loads((self.root / "pins" / f"{stamp}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_pin_memo(self, stamp: str, pin: dict) -> None:
        text = json.dumps(pin, sort_keys=True).encode()
        self._atomic_write(self.root / "pins" / f"{stamp}.json", lambda stream: stream.write(text))

    def _atomic_write(self, path: Path, write) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                write(stream)
            os.replace(temporary, path)
        except OSError as error:
            raise BuildError(f"{self.root}: cannot write the embedding cache ({error}); pass --no-cache") from error

    def info(self) -> CacheInfo:
        files = list((self.root / "rows").glob("*/*.npy")) if self.root.is_dir() else []
        return CacheInfo(root=self.root, entries=len(files), bytes=sum(f.stat().st_size for f in files))

    def clear(self) -> CacheInfo:
        """Remove every entry; returns what was there."""
        before = self.info()
        if self.root.is_dir():
            shutil.rmtree(self.root)
        return before


def _stamp(model) -> str | None:
    """A digest of the encoder files' (path, size, mtime), or None when the model has no such files."""
    tensors = text_encoder_tensors(model)
    files = getattr(tensors, "_files", None)
    return _files_stamp(path for path, _ in files.values()) if files else None


def _files_stamp(paths) -> str:
    stats = []
    for path in sorted({str(Path(path).resolve()) for path in paths}):
        status = os.stat(path)
        stats.append((path, status.st_size, status.st_mtime_ns))
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


class CachingModel:
    """A model whose ``encode``/``encode_pooled`` answer from an ``EmbeddingCache`` where they can.

    ``cache=None`` stores nothing but encodes the same way (``--no-cache``). ``hits`` and
    ``encoded`` count prompts per call kind, for the build summary and the tests.
    """

    def __init__(self, model, cache: EmbeddingCache | None) -> None:
        self._model = model
        self._cache = cache
        self._pin: dict | None = None
        self._pin_known = False
        self.hits = 0
        self.encoded: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def text_encoder_pin(self) -> dict | None:
        """``model_text_encoder_pin`` of the wrapped model, computed once and memoised by file stamp."""
        if not self._pin_known:
            stamp = _stamp(self._model) if self._cache is not None else None
            pin = self._cache.pin_memo(stamp) if stamp is not None else None
            if pin is None:
                pin = model_text_encoder_pin(self._model)
                if stamp is not None and pin is not None:
                    self._cache.put_pin_memo(stamp, pin)
            self._pin, self._pin_known = pin, True
        return self._pin

    def _weights_key(self, *context) -> str | None:
        """A memo key for something computed from the K/V weights file, or None when not cacheable."""
        weights_file = getattr(self._model, "unet_weights_file", None)
        if self._cache is None or weights_file is None or not Path(weights_file).is_file():
            return None
        text = json.dumps([CACHE_VERSION, _files_stamp([weights_file]), *context])
        return hashlib.sha256(text.encode()).hexdigest()

    def site_gram(self, space, roles) -> np.ndarray:
        """The wrapped model's ``site_gram``, memoised under the K/V file's (path, size, mtime) and
        the sites: SDXL's 140 matrices take ≈ 10–40 s to read and multiply in float64 on 2 cores."""
        key = self._weights_key("site-gram", space.name, sorted(roles), [(s.module_path, s.role) for s in space.sites])
        gram = None if key is None else self._cache.get(key, "grams")
        if gram is None:
            gram = self._model.site_gram(space, roles)
            if key is not None:
                self._cache.put(key, gram, "grams")
        return gram

    def base_pin(self, module_paths) -> dict:
        """``model_base_pin`` of the wrapped model, memoised like ``site_gram`` (SDXL: ≈ 7 s of reading
        and hashing 140 matrices per build)."""
        key = self._weights_key("base-pin", sorted(module_paths))
        pin = None if key is None else self._cache.pin_memo(key)
        if pin is None:
            pin = model_base_pin(self._model, module_paths)
            if key is not None:
                self._cache.put_pin_memo(key, pin)
        return pin

    def _keys(self, prompts: list[str], kind: str, padded: bool) -> dict[str, str]:
        pin = self.text_encoder_pin() or {}
        ids = self._model.tokenize(prompts)
        context = {
            "v": CACHE_VERSION,
            "encoder": pin.get("sha256"),
            "family": self._model.family,
            "encoders": [list(map(str, e)) for e in self._model.encoders],
            "kind": kind,
            "padded": padded,
        }
        head = json.dumps(context, sort_keys=True)
        return {
            prompt: hashlib.sha256(f"{head}\n{token_ids}\n{prompt}".encode()).hexdigest()
            for prompt, token_ids in zip(prompts, ids)
        }

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        return self._lookup(prompts, "rows", padded)

    def encode_pooled(self, prompts: Sequence[str]) -> list[np.ndarray]:
        return self._lookup(prompts, "pooled", True)

    def _lookup(self, prompts: Sequence[str], kind: str, padded: bool) -> list[np.ndarray]:
        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        rows: dict[str, np.ndarray] = {}
        keys: dict[str, str] = {}
        if self._cache is not None and self.text_encoder_pin() is not None:
            keys = self._keys(distinct, kind, padded)
            for prompt in distinct:
                found = self._cache.get(keys[prompt])
                if found is not None:
                    rows[prompt] = found
        missing = [prompt for prompt in distinct if prompt not in rows]
        self.hits += len(distinct) - len(missing)
        if missing:
            fresh = self._model.encode_pooled(missing) if kind == "pooled" else self._model.encode(missing, padded=padded)
            for prompt, array in zip(missing, fresh):
                rows[prompt] = array
                if keys:
                    self._cache.put(keys[prompt], array)
        self.encoded.extend(missing)
        return [rows[prompt] for prompt in prompts]
