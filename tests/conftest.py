"""Shared fixtures: every test runs offline, with the erasec cache in a per-session temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# huggingface_hub reads these when it is first imported, which may happen while test modules are
# collected, before any fixture runs: set them here, at conftest import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def erasec_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ERASEC_CACHE_DIR`` for the whole session, so no test writes to ``~/.cache/erasec``."""
    cache = tmp_path_factory.mktemp("erasec-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ERASEC_CACHE_DIR", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield cache


@pytest.fixture(scope="session")
def tiny_sd1_path(erasec_cache_dir: Path) -> Path:
    """The ``builtin:tiny-sd1`` diffusers folder, built once per session."""
    from erasec.compiler.models.builtin import builtin_model_path

    return builtin_model_path("tiny-sd1")


@pytest.fixture(scope="session")
def tiny_sd1_single_file(erasec_cache_dir: Path) -> Path:
    """``builtin:tiny-sd1.safetensors``: the folder as one LDM checkpoint with export-single-file's
    header, built once per session (the CLI tests that name it share the same file); read, never write."""
    from erasec.compiler.models.builtin import builtin_model_path

    return builtin_model_path("tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def minilm_sd1_path(erasec_cache_dir: Path) -> Path:
    """The ``builtin:minilm-sd1`` folder (pretrained MiniLM encoder), built once per session."""
    from erasec.compiler.models.builtin import builtin_model_path

    return builtin_model_path("minilm-sd1")


@pytest.fixture(scope="session")
def dit_builtin(erasec_cache_dir: Path):
    """``dit_builtin("tiny-flux")``: a diffusion-transformer built-in's folder (tiny-flux, tiny-chroma,
    tiny-sd3, tiny-wan, minilm-flux), built once per session on first use."""
    from erasec.compiler.models.builtin import builtin_model_path

    return builtin_model_path


@pytest.fixture(scope="session")
def tiny_flux_path(dit_builtin) -> Path:
    """The ``builtin:tiny-flux`` diffusers folder, built once per session."""
    return dit_builtin("tiny-flux")
