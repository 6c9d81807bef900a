"""Reading a patch file: data only, checked before anything trusts it.

A patch is parsed by hand from its bytes — an 8-byte length, a JSON header (size-checked against
safetensors' 100 MB limit, ``safetensors_io.read_header``), raw little-endian tensors — so nothing
in it can execute (no pickle, no ``torch.load``). ``read_patch`` refuses, with a one-line reason:

* anything but a regular file (a folder, a FIFO, a device: reading a FIFO would hang);
* a truncated or padded file (the header's offsets must tile the data section exactly);
* a foreign file: a safetensors file without ``erasec.format`` (a plain LoRA, a checkpoint);
* a format version this erasec does not read (format 1 predates ``erasec.digest``);
* a tampered file: the sha256 of the tensor bytes differs from ``sshs_model_hash``, or the digest
  of the metadata, tensor index and tensor bytes from ``erasec.digest`` (``manifest.patch_digest``),
  so one flipped bit anywhere but in the padding is caught;
* a patch that is not what its manifest says (``validate.check_patch``): an undeclared tensor, a
  declared layer without its factors, wrong ranks, shapes, alphas or JSON types.

``verify`` calls ``read_raw`` and ``checked`` itself, to report a hash mismatch as its answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PatchError
from .manifest import DIGEST_KEY, FORMAT_VERSION, patch_digest
from .safetensors_io import read_header
from .manifest_checks import layer_role
from .validate import Declared, LoraModule, check_patch, factor_names

_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2"}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RawPatch:
    """A patch's bytes parsed but not yet trusted: header, hashes, and what its integrity check found."""

    path: Path
    size: int  # bytes
    entries: dict  # tensor name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]
    data_offset: int  # where the data section starts
    data_sha256: str  # sha256 of the bytes after the header (the addnet hash)
    problem: str | None  # why the hashes do not match, or None

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float64, read from the file's bytes."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise PatchError(f"{self.path}: no tensor {name!r}") from None
        start, end = (int(n) for n in entry["data_offsets"])
        shape = tuple(int(n) for n in entry["shape"])
        with open(self.path, "rb") as stream:
            stream.seek(self.data_offset + start)
            raw = stream.read(end - start)
        if entry["dtype"] == "BF16":
            array = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        elif entry["dtype"] in _NUMPY_DTYPES:
            array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[entry["dtype"]])
        else:
            raise PatchError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}; a patch holds floats only")
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise PatchError(f"{self.path}: tensor {name!r} has {array.size} values for shape {shape}")
        return array.astype(np.float64).reshape(shape)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PatchFile(RawPatch):
    """A read and checked patch: ``declared`` holds its manifest's values, typed and consistent with
    its tensors (``validate.check_patch``), so commands read them without re-checking."""

    declared: Declared
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def hash_matches(self) -> bool:
        return self.problem is None

    def json(self, key: str):
        """A JSON-valued ``erasec.*`` key, parsed; a missing or malformed one is a damaged patch."""
        if key not in self.metadata:
            raise PatchError(f"{self.path}: {key}: missing; not a complete erasec patch")
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError:
            raise PatchError(f"{self.path}: {key}: is not valid JSON; the file is damaged") from None

    @property
    def spec(self) -> dict:
        return self.declared.spec

    @property
    def base(self) -> dict:
        return self.declared.base

    @property
    def spaces(self) -> tuple[dict, ...]:
        return self.declared.spaces

    @property
    def sequence_length(self) -> int | None:
        """The T5 padding a diffusion transformer's patch was built at (``erasec.base``; checked
        present for those families); None for an SD patch."""
        return self.declared.base.get("sequence_length")

    @property
    def report(self) -> dict:
        return self.declared.report

    @property
    def modules(self) -> tuple[LoraModule, ...]:
        return self.declared.modules

    @property
    def rank(self) -> int:
        return self.declared.rank

    @property
    def name(self) -> str:
        return self.metadata["erasec.name"]

    @property
    def version(self) -> str:
        return self.metadata["erasec.version"]

    @property
    def dtype(self) -> str:
        return self.declared.dtype

    def shared_solution(self):
        """``erasec.shared`` decoded (``None`` when absent), its spaces checked against ``erasec.spaces``."""
        from .link import decode_shared

        if "erasec.shared" not in self.metadata:
            return None
        if "shared" not in self._cache:
            where = f"{self.path}: erasec.shared"
            solution = decode_shared(self.metadata["erasec.shared"], where=where)
            widths = {m.space: m.in_features for m in self.modules}
            declared = {s["space"]: s for s in self.spaces}
            if {s.space for s in solution.spaces} != set(declared):
                raise PatchError(f"{where}: its key spaces are not those erasec.spaces declares")
            for space in solution.spaces:
                if space.rank != declared[space.space]["rank"] or space.left.shape[0] > widths[space.space]:
                    raise PatchError(f"{where}: space {space.space!r} disagrees with erasec.spaces and the tensors")
            # erasec.shared records T − I per space, not which sites it edits: the declared layers say
            # (a DiT's context/pooled site, SPEED's to_v only), so a retarget emits exactly those
            solution = dataclasses.replace(solution, spaces=tuple(
                dataclasses.replace(space, roles=tuple(sorted({layer_role(layer) for layer in declared[space.space]["layers"]})))
                for space in solution.spaces
            ))
            self._cache["shared"] = solution
        return self._cache["shared"]

    def encodings(self) -> dict:
        """``erasec.link`` decoded (the recorded text-encoder outputs)."""
        from .link import decode_encodings

        return decode_encodings(self.metadata["erasec.link"], where=f"{self.path}: erasec.link")

    def module(self, layer: str) -> LoraModule:
        for module in self.modules:
            if module.layer == layer:
                return module
        raise PatchError(f"{self.path}: no LoRA module for {layer}")

    def layer_factors(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) with ``ΔW = up @ down`` of the site at diffusers module path ``layer``, in float64,
        as a loader applies it (kohya ``alpha/r`` or PEFT ``lora_alpha/r``: both 1 in a checked patch)."""
        up_name, down_name, _ = factor_names(self.declared.layout, self.module(layer).prefix)
        return self.tensor(up_name), self.tensor(down_name)

    def layers(self) -> list[str]:
        """The diffusers module paths the patch edits (from ``erasec.spaces``)."""
        return sorted(module.layer for module in self.modules)

    def layer_delta(self, layer: str) -> np.ndarray:
        up, down = self.layer_factors(layer)
        return up @ down


def _data_sha256(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        stream.seek(offset)
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _integrity_problem(entries: dict, metadata: dict[str, str], data_sha256: str) -> str | None:
    recorded = metadata.get("sshs_model_hash", "(none)")
    if recorded != data_sha256:
        return f"the tensor bytes hash to {data_sha256[:12]}…, the header records {recorded[:12]}…"
    if DIGEST_KEY not in metadata:
        return f"no {DIGEST_KEY} key: the metadata is not covered"
    actual = patch_digest(metadata, entries, data_sha256)
    if metadata[DIGEST_KEY] != actual:
        return f"the metadata and tensor index digest to {actual[:12]}…, {DIGEST_KEY} records {metadata[DIGEST_KEY][:12]}…"
    return None


def read_raw(path: str | os.PathLike) -> RawPatch:
    """The patch at ``path`` parsed (a foreign or damaged file refused) and its hashes compared."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PatchError(f"{path}: no such file") from None
    except OSError as error:
        raise PatchError(f"{path}: cannot read ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise PatchError(f"{path}: is a folder; give a patch file (.safetensors)")
    if not stat.S_ISREG(mode):
        raise PatchError(f"{path}: not a regular file (a FIFO, socket or device); give a patch file (.safetensors)")
    entries, metadata = read_header(path)
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
    if "erasec.format" not in metadata:
        raise PatchError(f"{path}: not an erasec patch (no erasec.format key); a plain LoRA or checkpoint cannot be used here")
    if metadata["erasec.format"] == "1":
        raise PatchError(
            f"{path}: patch format '1' predates the integrity digest ({DIGEST_KEY}) of format {FORMAT_VERSION}; "
            "rebuild it with this erasec"
        )
    if metadata["erasec.format"] != FORMAT_VERSION:
        raise PatchError(
            f"{path}: patch format {metadata['erasec.format']!r} is not known; this erasec reads format {FORMAT_VERSION}"
        )
    data_sha256 = _data_sha256(path, 8 + length)
    return RawPatch(
        path=path,
        size=os.path.getsize(path),
        entries=entries,
        metadata=metadata,
        data_offset=8 + length,
        data_sha256=data_sha256,
        problem=_integrity_problem(entries, metadata, data_sha256),
    )


def checked(raw: RawPatch) -> PatchFile:
    """``raw`` as a ``PatchFile`` once its structure is what its manifest declares."""
    declared = check_patch(raw.path, raw.entries, raw.metadata, alphas=lambda name: float(raw.tensor(name).reshape(-1)[0]))
    fields = {name: getattr(raw, name) for name in RawPatch.__dataclass_fields__}
    patch = PatchFile(**fields, declared=declared)
    patch.shared_solution()  # decoded once here, so a damaged record is refused by every command
    return patch


def read_patch(path: str | os.PathLike) -> PatchFile:
    """Read and check the patch at ``path``; raises ``PatchError`` with the reason."""
    raw = read_raw(path)
    if raw.problem is not None:
        raise PatchError(f"{raw.path}: tampered or corrupted: {raw.problem}; rebuild or re-download it")
    return checked(raw)
