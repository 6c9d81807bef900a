"""Named tensors of one checkpoint file, read one at a time: safetensors by seek and read, an allowed
pickle once with ``torch.load(weights_only=True)``.

Reads go through plain file I/O rather than an mmap, so pages read once do not stay resident, and
``LazyWeights`` hands out each K/V weight only when asked (peak RSS, docs/performance.md).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from ..errors import ModelError

def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def unreadable(path: Path, error: BaseException) -> ModelError:
    return ModelError(f"{path}: not a readable safetensors file ({first_line(error)}); re-download or re-save it")


TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def regular_file(path: Path, *, missing: str = "no such file") -> Path:
    """``path``, refused in one line unless it is a regular file (following symlinks): opening a
    FIFO blocks until a writer comes, and a device reads forever (issue 16 item 12). ``missing``:
    the message when there is nothing there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelError(f"{path}: {missing}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ModelError(f"{path}: a symbolic link loop; point it at the model file") from None
        raise ModelError(f"{path}: cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a folder" if stat.S_ISDIR(mode) else "not a file")
        raise ModelError(f"{path}: {kind}, not a regular file; give the model's file itself")
    return path


class TensorFile:
    """Named tensors of one file, read lazily (safetensors) or once (an allowed pickle)."""

    def __init__(self, path: Path, *, pickled: bool) -> None:
        self.path = regular_file(path)
        self.pickled = pickled
        self._state: dict | None = None
        if pickled:
            self._state = load_pickle(path)
            self.metadata: dict[str, str] = {}
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
            self.dtypes = _stored_dtypes(self._state)
        else:
            try:  # safetensors validates the whole header (offsets tile the data, sizes match)
                with safe_open(str(path), framework="pt") as handle:
                    self.metadata = dict(handle.metadata() or {})
                    self.shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            except (SafetensorError, OSError) as error:
                raise unreadable(path, error) from error
            with open(path, "rb") as stream:
                (length,) = struct.unpack("<Q", stream.read(8))
                self._entries = json.loads(stream.read(length))
            self._data_start = 8 + length
            self.dtypes = {k: v["dtype"] for k, v in self._entries.items() if k != "__metadata__"}

    def tensors(self, names: Sequence[str]) -> dict[str, object]:
        """The named tensors, each read with one seek and read: no mmap, so pages read once do not
        stay resident (peak RSS, docs/performance.md)."""
        if self._state is not None:
            return {name: self._state[name] for name in names}
        import torch

        out = {}
        try:
            with open(self.path, "rb") as stream:
                for name in names:
                    entry = self._entries[name]
                    start, stop = entry["data_offsets"]
                    stream.seek(self._data_start + start)
                    raw = bytearray(stream.read(stop - start))
                    if len(raw) != stop - start:
                        raise OSError(f"{name}: file shorter than its header says")
                    dtype = getattr(torch, TORCH_DTYPES[entry["dtype"]])
                    out[name] = torch.frombuffer(raw, dtype=dtype).reshape(entry["shape"]) if raw else torch.zeros(
                        entry["shape"], dtype=dtype
                    )
        except OSError as error:
            raise unreadable(self.path, error) from error
        except KeyError as error:
            raise ModelError(f"{self.path}: tensor dtype {error.args[0]} is not a float type erasec reads") from None
        return out


class LazyWeights(Mapping):
    """module path → float32 weight, each read from the file when asked for."""

    def __init__(self, file: TensorFile, names: dict[str, tuple[str, int]]) -> None:
        self._file = file
        self._names = names  # module path -> (tensor name, columns the site reads)

    def __getitem__(self, module_path: str) -> np.ndarray:
        import torch

        name, columns = self._names[module_path]
        tensor = self._file.tensors([name])[name]
        if tensor.shape[1] != columns:  # SDXL's add_embedding.linear_1: the pooled columns only
            tensor = tensor[:, :columns].contiguous()
        array = tensor.to(torch.float32).numpy()
        array.flags.writeable = False
        return array

    def __contains__(self, module_path: object) -> bool:  # Mapping's would read the tensor
        return module_path in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)



def read_json(path: Path) -> dict:
    """A component's ``config.json`` (or any JSON object file), refused with a one-line error."""
    regular_file(path, missing="no such file; the component needs its config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: unreadable ({first_line(error)})") from error
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data

def _stored_dtypes(state: Mapping[str, object]) -> dict[str, str]:
    """name → safetensors dtype code (``F16``…) of each tensor of a loaded state dict."""
    import torch

    codes = {getattr(torch, name): code for code, name in TORCH_DTYPES.items()}
    return {key: codes.get(tensor.dtype, str(tensor.dtype)) for key, tensor in state.items()}


def load_pickle(path: Path) -> dict:
    """The state dict of a ``torch.save`` file, zip (torch ≥ 1.6, memory-mapped) or legacy (read
    whole: ``mmap`` needs the zip layout), never running code from it (``weights_only``)."""
    import pickle
    import zipfile

    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelError(
            f"{path}: cannot load this pickle with weights_only=True ({first_line(error)}); "
            "convert it to .safetensors with the tool that made it"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelError(f"{path}: the pickle holds a {type(loaded).__name__}, not a state dict of tensors")
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
