"""A content-addressed cache of text-encoder rows, so a rebuild after a spec edit encodes only the
prompts it has not seen (issue 8; research/perf-baseline.md §7: a build is text-encoder-bound, > 97 %
of its time at N ≥ 100).

An entry's key is the SHA-256 of everything that decides its rows (issue 16 item 10): the
text-encoder pin (``compiler.pins``: a digest of every encoder weight, so another checkpoint with the
same encoder shares entries), the encoders' other files (``config.json``: ``layer_norm_eps``,
``hidden_act``…; the tokenizer's vocabulary, merges and special tokens) or a single file's header
metadata, the family's encoders (component, hidden state, pad token), what is encoded (``rows`` or
``pooled``), ``padded``, the truncation length, the prompt's token ids and the prompt, and the
versions of the code that computes them (``CACHE_VERSION`` for erasec's, torch and transformers).
Each entry holds its key and a SHA-256 of its bytes (``compiler.cache_entries``); anything that is
not a whole entry for its key — empty, truncated, bit-flipped, swapped, a folder — is a miss: it is
removed and encoded again (issue 16 item 5). Entries are written by ``patches.atomic.write_file``
(fsync of file and folder, then rename). A cache folder that cannot be written (read-only, full)
costs one warning and the build goes on without storing (issue 16 item 11).

Rows do not depend on the cache's history or the thread count (issue 16 item 9): each prompt is
encoded in a pass of its own on one torch thread, so its rows are computed by the same kernels on
the same shapes whether it is encoded in a warm rebuild, among hundreds in a cold one, or by a
``build-many`` worker. The passes run on as many Python threads as torch had intra-op threads
(``use_all_cores``: the usable cores, or an explicit ``OMP_NUM_THREADS``; one in a ``build-many``
worker of one thread), each a one-thread computation with its own encoder modules and fp32
workspace (``text_encoders.replica``), and are collected in the prompts' order, so neither the
scheduling nor the number of workers shows in the rows; torch releases the GIL in its ops. Batched fp32 passes round a row's last bits differently with the batch's
size and padded width, and with the thread count (MKL's GEMMs under 12 rows, SDPA with small heads);
passes of one token length and at least 16 rows agreed to the bit on CLIP-L's and MiniLM's shapes
but not on tiny-sd1's, so only a pass per prompt is exact by construction. It costs encoding
speed: docs/performance.md, "Determinism and its cost".

The pin itself costs a read of the whole encoder (≈ 6 s for CLIP-L under load, measured in
docs/performance.md); it is memoised under the files' (path, size, mtime) like git's index, so only
the first build against an encoder file pays it. Two other per-model costs are memoised the same way
under the K/V weights file's stamp: the site Gram Σ W0ᵀW0 (``grams/``; SDXL's 140 matrices) and the
patch's base pin (``pins/``).

The device path (``placement.py``: ``--device cuda``, ``--encoder-dtype bf16`` or
``--encode-batch N``) encodes the prompts ``batch`` at a time instead, every pass of one shape (the
model's full padded length, a short last batch filled), on the device and with torch's threads: its
rows equal the CPU path's to fp32 rounding, not bit for bit, so its entries are keyed by the
placement (device kind, encoder dtype, batch) as well.

``CachingModel`` wraps an opened ``SDModel`` (its keys read the model's files) and is itself a
``protocol.TextModel``, as ``recording.RecordingModel`` is; ``--no-cache`` builds go through it too
(``cache=None``), so they encode exactly as cached ones do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cache_entries import CacheInfo, EmbeddingCache  # noqa: F401  (the CLI's `erasec cache`)
from .pins import text_encoder_tensors
from .placement import placement_of
from .wrapper import ModelWrapper

if TYPE_CHECKING:
    from .sd import SDModel

# 2: entries with key and checksum (cache_entries); each prompt encoded alone on one torch thread
CACHE_VERSION = 2
_TRUNCATION = 77  # tokens: every family's tokenizers truncate to CLIP's context


def _stamp(model: SDModel) -> str | None:
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


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def encoder_files_digest(model: SDModel) -> str:
    """A SHA-256 of what besides the weights decides the rows: in a diffusers folder, every JSON and
    text file of each encoder's folder (``config.json``) and of its tokenizer's (vocabulary, merges,
    special tokens); for a single file, its header metadata (the text-encoder config it records)."""
    from .sd_components import TOKENIZER_OF

    sources = getattr(model, "inputs", None)  # a DiT's encoders and tokenizers given apart (dit_inputs.py)
    if sources is not None:
        return sources.files_digest()
    digest = hashlib.sha256()
    root = Path(model.path)
    if root.is_dir():
        for component, _, _ in model.encoders:
            for folder in (root / component, root / TOKENIZER_OF[component]):
                files = sorted(folder.iterdir()) if folder.is_dir() else []
                for path in (f for f in files if f.suffix in (".json", ".txt") and f.is_file()):
                    digest.update(f"{folder.name}/{path.name}\0".encode())
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
    else:
        digest.update(json.dumps(model._file.metadata, sort_keys=True).encode())  # the opened file: a pickle too
    return digest.hexdigest()


@contextlib.contextmanager
def _one_torch_thread():
    """torch's intra-op threads set to one, then back (module docstring: rows must not depend on it);
    yields how many there were."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _passes(encode: Callable[[str], np.ndarray], prompts: list[str], workers: int) -> Iterator[np.ndarray]:
    """``encode(prompt)`` for each prompt, in order, on ``workers`` threads of one torch thread each
    (inside ``_one_torch_thread``); the first error is raised and the passes not begun are dropped."""
    import torch

    if workers <= 1:
        yield from map(encode, prompts)
        return
    # set_num_threads in each worker too: OpenMP keeps a thread count per thread
    pool = ThreadPoolExecutor(workers, "erasec-encode", initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield from pool.map(encode, prompts)
    finally:
        pool.shutdown(cancel_futures=True)


class CachingModel(ModelWrapper):
    """A model whose ``encode``/``encode_pooled`` answer from an ``EmbeddingCache`` where they can,
    and encode the rest one prompt per pass on one torch thread (module docstring).

    ``cache=None`` stores nothing but encodes the same way (``--no-cache``). ``hits`` (prompts
    answered from the cache) and ``encoded`` (prompts sent to the encoder) are for the build summary
    and the tests.
    """

    inner: SDModel

    def __init__(self, model: SDModel, cache: EmbeddingCache | None) -> None:
        super().__init__(model)
        self._cache = cache
        self._placement = placement_of(model)  # the device path when not the CPU path (module docstring)
        self._pin: dict | None = None
        self._pin_known = False
        self._context: str | None = None
        self.hits = 0
        self.encoded: list[str] = []

    def text_encoder_pin(self) -> dict | None:
        """The wrapped model's ``text_encoder_pin``, computed once and memoised by file stamp."""
        if not self._pin_known:
            stamp = _stamp(self.inner) if self._cache is not None else None
            pin = self._cache.memo(stamp) if stamp is not None else None
            if pin is None:
                pin = self.inner.text_encoder_pin()
                if stamp is not None and pin is not None:
                    self._cache.put_memo(stamp, pin)
            self._pin, self._pin_known = pin, True
        return self._pin

    def _weights_key(self, *context) -> str | None:
        """A memo key for something computed from the K/V weights file, or None when not cacheable."""
        weights_file = self.inner.unet_weights_file
        if self._cache is None or not Path(weights_file).is_file():
            return None
        text = json.dumps([CACHE_VERSION, _files_stamp([weights_file]), *context])
        return hashlib.sha256(text.encode()).hexdigest()

    def site_gram(self, space, roles) -> np.ndarray:
        """The wrapped model's ``site_gram``, memoised under the K/V file's (path, size, mtime) and
        the sites: SDXL's 140 matrices take ≈ 10–40 s to read and multiply in float64 on 2 cores."""
        key = self._weights_key("site-gram", space.name, sorted(roles), [(s.module_path, s.role) for s in space.sites])
        gram = None if key is None else self._cache.get(key, "grams", (space.dim, space.dim))
        if gram is None:
            gram = self.inner.site_gram(space, roles)
            if key is not None:
                self._cache.put(key, gram, "grams")
        return gram

    def base_pin(self, module_paths) -> dict:
        """The wrapped model's ``base_pin``, memoised like ``site_gram`` (SDXL: ≈ 7 s of reading
        and hashing 140 matrices per build)."""
        key = self._weights_key("base-pin", sorted(module_paths))
        pin = None if key is None else self._cache.memo(key)
        if pin is None:
            pin = self.inner.base_pin(module_paths)
            if key is not None:
                self._cache.put_memo(key, pin)
        return pin

    def _keys(self, prompts: list[str], kind: str, padded: bool) -> tuple[dict[str, str], dict[str, int]]:
        """Per prompt, its entry key and its token count."""
        pin = self.text_encoder_pin() or {}
        if self._context is None:
            self._context = encoder_files_digest(self.inner)
        ids = self.inner.tokenize(prompts)
        context = {
            "v": CACHE_VERSION,
            "encoder": pin.get("sha256"),
            "encoder_files": self._context,
            "family": self.inner.family,
            "encoders": [list(map(str, e)) for e in self.inner.encoders],
            "kind": kind,
            "padded": padded,
            "truncation": _TRUNCATION,
            **({"rows": self.inner.padded_rows} if self.inner.padded_rows != _TRUNCATION else {}),
            **({} if self._placement.cpu_path else {"placement": self._placement.as_dict()}),
            "torch": _package_version("torch"),
            "transformers": _package_version("transformers"),
        }
        head = json.dumps(context, sort_keys=True)
        keys = {
            prompt: hashlib.sha256(f"{head}\n{token_ids}\n{prompt}".encode()).hexdigest()
            for prompt, token_ids in zip(prompts, ids)
        }
        return keys, {prompt: len(token_ids) for prompt, token_ids in zip(prompts, ids)}

    def _shape(self, kind: str, padded: bool, tokens: int) -> tuple[int, ...] | None:
        if kind == "pooled":
            return None
        return (self.inner.padded_rows if padded else tokens, self.inner.target.spaces[0].dim)

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
            keys, tokens = self._keys(distinct, kind, padded)
            for prompt in distinct:
                found = self._cache.get(keys[prompt], kind, self._shape(kind, padded, tokens[prompt]))
                if found is not None:
                    rows[prompt] = found
        missing = [prompt for prompt in distinct if prompt not in rows]
        self.hits += len(distinct) - len(missing)
        if missing and not self._placement.per_prompt:
            for prompt, array in self._batched(missing, kind, padded):
                rows[prompt] = array
                if keys:
                    self._cache.put(keys[prompt], array, kind)
        elif missing:

            def encode(prompt: str) -> np.ndarray:  # a pass of its own: its rows do not depend on the others
                return (self.inner.encode_pooled([prompt]) if kind == "pooled" else self.inner.encode([prompt], padded=padded))[0]

            with _one_torch_thread() as threads:
                for prompt, array in zip(missing, _passes(encode, missing, min(threads, len(missing)))):
                    rows[prompt] = array
                    if keys:
                        self._cache.put(keys[prompt], array, kind)
        self.encoded.extend(missing)
        return [rows[prompt] for prompt in prompts]

    def _batched(self, prompts: list[str], kind: str, padded: bool) -> Iterator[tuple[str, np.ndarray]]:
        """The device path: ``prompts`` in passes of ``batch``, each filled to a full batch and padded
        to the model's length (module docstring), every prompt's rows cut to its tokens unless
        ``padded``: the rows a shorter pass gives, to fp32 rounding (a causal or masked encoder)."""
        size = self._placement.batch
        tokens = {} if padded or kind == "pooled" else dict(zip(prompts, map(len, self.inner.tokenize(prompts))))
        for start in range(0, len(prompts), size):
            chunk = prompts[start : start + size]
            batch = self._placement.fill(chunk)
            arrays = self.inner.encode_pooled(batch) if kind == "pooled" else self.inner.encode(batch, padded=True)
            for prompt, array in zip(chunk, arrays):
                if prompt in tokens:
                    array = np.ascontiguousarray(array[: tokens[prompt]])
                    array.flags.writeable = False
                yield prompt, array
