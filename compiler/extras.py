"""The optional extras (pyproject's ``[project.optional-dependencies]``) a command needs: a missing
one is one line naming the extra to install, not a ``ModuleNotFoundError`` traceback.

The README's set-up installs ``.[semantic]`` only; ``onnx`` (ONNX export, patched graphs, ONNX
Runtime; ``gpu`` installs the same modules with ``onnxruntime-gpu``) and ``cluster`` (Ray) come on
request (docs/onnx.md, docs/scaling.md). ``importlib.util.find_spec`` looks a module up without
importing it, so the check costs nothing when the extra is there.
"""

from __future__ import annotations

from importlib.util import find_spec

from .errors import BuildError

EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnx_ir", "onnxruntime", "onnxscript"),  # onnxruntime-gpu (the gpu extra) is onnxruntime too
    "cluster": ("ray",),
}


def install_hint(extra: str) -> str:
    """The one install command the docs give for ``extra`` (a checkout installs ``".[extra]"``)."""
    return f'pip install "erasec[{extra}]" (in a checkout: pip install ".[{extra}]")'


def _present(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked import; a module whose __spec__ is None
        return False


def require_extra(extra: str, where: str) -> None:
    """Raise ``BuildError`` naming ``where`` (the command or spec field) when a module of ``extra`` is absent."""
    missing = [module for module in EXTRAS[extra] if not _present(module)]
    if missing:
        raise BuildError(f"{where}: needs the {extra} extra ({', '.join(missing)} not installed); {install_hint(extra)}")
