"""Arrays packed into one header string: how a patch carries numbers that are not LoRA tensors.

A kohya LoRA file may hold only ``lora_unet_*``/``lora_te*`` tensors — diffusers' loader raises on
any other key (research/ecosystem.md §1.3) — so the data ``compose`` and ``retarget`` need travels
in the ``str → str`` metadata instead (§2.1). The string is JSON::

    {"packed": 1, "meta": {...}, "arrays": {name: {"dtype": "<f8", "shape": [..], "offset": n}},
     "data": base64(zlib(concatenated little-endian array bytes))}

It is written with no timestamps (``numpy.savez`` stamps each member with the time, which would
break byte-identical builds) and read as data only: no pickle, a whitelist of dtypes, a bound on
the inflated size, and every array checked to lie inside the buffer.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Mapping

import numpy as np

from .errors import PatchError

PACKED_VERSION = 1
MAX_INFLATED_BYTES = 1 << 31  # 2 GiB: more than any legitimate patch carries, less than a zip bomb
_DTYPES = ("<f8", "<f4")


def pack_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, object]) -> str:
    """The header string for ``arrays`` (float64 stored as float32 when that is lossless) and ``meta``."""
    index, chunks, offset = {}, [], 0
    for name in sorted(arrays):
        array = np.asarray(arrays[name], dtype=np.float64)
        narrow = array.astype("<f4")
        stored = narrow if np.array_equal(narrow.astype(np.float64), array) else array.astype("<f8")
        raw = np.ascontiguousarray(stored).tobytes()
        index[name] = {"dtype": stored.dtype.str, "shape": list(array.shape), "offset": offset}
        chunks.append(raw)
        offset += len(raw)
    data = base64.b64encode(zlib.compress(b"".join(chunks), 6)).decode("ascii")
    document = {"packed": PACKED_VERSION, "meta": dict(meta), "arrays": index, "data": data}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _inflate(data: str, where: str) -> bytes:
    try:
        compressed = base64.b64decode(data.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, MAX_INFLATED_BYTES)
    except (binascii.Error, UnicodeEncodeError, zlib.error):
        raise PatchError(f"{where}: the packed data is not valid base64/zlib; the file is damaged") from None
    if inflater.unconsumed_tail:
        raise PatchError(f"{where}: the packed data inflates beyond {MAX_INFLATED_BYTES} bytes; refusing it")
    return raw


def unpack_arrays(text: str, where: str) -> tuple[dict[str, np.ndarray], dict]:
    """(float64 read-only arrays by name, meta) of a ``pack_arrays`` string; ``where`` names it in errors."""
    try:
        document = json.loads(text)
        version, meta, index, data = document["packed"], document["meta"], document["arrays"], document["data"]
    except (json.JSONDecodeError, TypeError, KeyError):
        raise PatchError(f"{where}: not a packed-array record; the file is damaged") from None
    if version != PACKED_VERSION:
        raise PatchError(f"{where}: packed-array version {version!r} is not known; upgrade erasec")
    if not isinstance(meta, dict) or not isinstance(index, dict) or not isinstance(data, str):
        raise PatchError(f"{where}: not a packed-array record; the file is damaged")
    raw = _inflate(data, where)
    arrays = {}
    for name, entry in index.items():
        try:
            dtype, shape, offset = entry["dtype"], tuple(int(n) for n in entry["shape"]), int(entry["offset"])
        except (TypeError, KeyError, ValueError):
            raise PatchError(f"{where}: array {name!r} has no valid dtype/shape/offset") from None
        if dtype not in _DTYPES or any(n < 0 for n in shape) or offset < 0:
            raise PatchError(f"{where}: array {name!r} has dtype {dtype!r}, shape {shape}; not allowed")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if offset + size > len(raw):
            raise PatchError(f"{where}: array {name!r} runs past the end of the packed data; the file is damaged")
        array = np.frombuffer(raw, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
        array = array.reshape(shape).astype(np.float64)
        array.flags.writeable = False
        arrays[name] = array
    return arrays, meta
