"""The SD1.x model frontend: a diffusers folder (or ``builtin:NAME``) as a target, weights and key rows.

Opening a model reads only what the compiler needs: the UNet safetensors header (site names and
shapes) and the text encoder's config. The cross-attention ``to_k``/``to_v`` tensors are read on
request through ``safe_open``; the UNet itself is never built. The text encoder is loaded on the
first ``encode`` call. Key rows follow the StableDiffusionPipeline convention (DESIGN.md §4,
research/methods.md §0.3): CLIP's final hidden state, after the final layer norm, no attention mask.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from erasec.ir import KeySpace, LinearSite, ModelTarget

from .builtin import builtin_model_path
from .errors import ModelError
from .tokenizer import MODEL_MAX_LENGTH, load_clip_tokenizer

logger = logging.getLogger(__name__)

_UNET_FILE = "diffusion_pytorch_model.safetensors"
_KV_WEIGHT = re.compile(r"^(?P<path>.+\.attn2\.to_(?P<role>[kv]))\.weight$")
_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_ENCODE_CHUNK = 32


def _site_order(module_path: str) -> tuple:
    """Natural model order: down, mid, up; numeric indices as numbers; to_k before to_v."""
    parts = module_path.split(".")
    return (_BLOCK_ORDER.get(parts[0], len(_BLOCK_ORDER)),) + tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_layout(path: Path, location: str) -> None:
    if not path.exists():
        raise ModelError(f"{location}: no such folder; give a diffusers Stable Diffusion 1.x folder or builtin:NAME")
    if not path.is_dir():
        raise ModelError(
            f"{location}: not a folder; single-file checkpoints are not supported yet, give a diffusers model folder"
        )
    for component in ("unet", "text_encoder", "tokenizer"):
        if not (path / component).is_dir():
            raise ModelError(
                f"{location}: no {component}/ folder; expected a diffusers Stable Diffusion 1.x folder "
                "with unet/, text_encoder/ and tokenizer/"
            )
    if (path / "text_encoder_2").is_dir():
        raise ModelError(f"{location}: has text_encoder_2/, an SDXL layout; only Stable Diffusion 1.x is supported")
    unet_file = path / "unet" / _UNET_FILE
    if not unet_file.is_file():
        raise ModelError(
            f"{unet_file}: no such file; erasec reads only safetensors (.bin pickles are not read), "
            "re-save the UNet with safe_serialization=True"
        )
    tokenizer = path / "tokenizer"
    has_pair = (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
    if not has_pair and not (tokenizer / "tokenizer.json").is_file():
        raise ModelError(f"{tokenizer}: no tokenizer files; expected vocab.json and merges.txt, or tokenizer.json")


def _text_hidden_size(config_file: Path) -> int:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{config_file}: no such file; the text encoder needs its config.json") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{config_file}: unreadable ({_first_line(error)})") from error
    hidden = config.get("hidden_size") if isinstance(config, dict) else None
    if not isinstance(hidden, int) or hidden <= 0:
        raise ModelError(f"{config_file}: hidden_size is {hidden!r}, not a positive integer; not a CLIP text config")
    return hidden


def _read_sites(unet_file: Path, dim: int) -> tuple[LinearSite, ...]:
    """The attn2 to_k/to_v sites, from the safetensors header only."""
    try:
        with safe_open(str(unet_file), framework="pt") as handle:
            shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys() if _KV_WEIGHT.match(name)}
    except (SafetensorError, OSError) as error:
        raise ModelError(
            f"{unet_file}: not a readable safetensors file ({_first_line(error)}); re-download or re-save it"
        ) from error
    if not shapes:
        raise ModelError(f"{unet_file}: no attn2.to_k/attn2.to_v weights; not a Stable Diffusion UNet")
    sites = []
    for name, shape in shapes.items():
        match = _KV_WEIGHT.match(name)
        if len(shape) != 2:
            raise ModelError(f"{unet_file}: {name} has shape {tuple(shape)}, expected a 2-D Linear weight")
        if shape[1] != dim:
            raise ModelError(
                f"{unet_file}: {name} reads {shape[1]} features but the text encoder's hidden size is {dim}; "
                "the UNet and text encoder do not belong together"
            )
        sites.append(
            LinearSite(module_path=match["path"], out_features=shape[0], in_features=shape[1], role=match["role"])
        )
    return tuple(sorted(sites, key=lambda site: _site_order(site.module_path)))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SD1Model:
    """An opened SD1.x model. Build it with ``SD1Model.open``; the heavy parts load on demand."""

    location: str
    path: Path
    target: ModelTarget
    unet_weights_file: Path
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def open(cls, location: str, *, cache_dir: Path | None = None) -> SD1Model:
        if location.startswith("builtin:"):
            path = builtin_model_path(location.removeprefix("builtin:"), cache_dir)
        else:
            path = Path(location).expanduser()
        _check_layout(path, location)
        dim = _text_hidden_size(path / "text_encoder" / "config.json")
        unet_file = path / "unet" / _UNET_FILE
        sites = _read_sites(unet_file, dim)
        space = KeySpace(name="clip-l", dim=dim, encoder="text_encoder", sites=sites)
        target = ModelTarget(family="sd1", name=location, spaces=(space,))
        logger.debug("opened %s: %d sites, key dim %d", location, len(sites), dim)
        return cls(location=location, path=path, target=target, unet_weights_file=unet_file)

    def kv_weights(self) -> dict[str, np.ndarray]:
        """module_path -> read-only float32 (out, in) weight; half-precision files are upcast."""
        if "kv" not in self._cache:
            import torch

            weights = {}
            try:
                with safe_open(str(self.unet_weights_file), framework="pt") as handle:
                    for site in self.target.sites:
                        array = handle.get_tensor(site.weight_name).to(torch.float32).numpy()
                        array.flags.writeable = False
                        weights[site.module_path] = array
            except (SafetensorError, OSError) as error:
                raise ModelError(
                    f"{self.unet_weights_file}: not a readable safetensors file ({_first_line(error)}); "
                    "re-download or re-save it"
                ) from error
            self._cache["kv"] = weights
        return dict(self._cache["kv"])

    def _tokenizer(self):
        if "tokenizer" not in self._cache:
            self._cache["tokenizer"] = load_clip_tokenizer(self.path / "tokenizer")
        return self._cache["tokenizer"]

    def _text_encoder(self):
        if "text_encoder" not in self._cache:
            import torch
            from transformers import CLIPTextModel

            folder = self.path / "text_encoder"
            try:
                encoder = CLIPTextModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
            except (OSError, ValueError) as error:
                raise ModelError(f"{folder}: cannot load the CLIP text encoder ({_first_line(error)})") from error
            self._cache["text_encoder"] = encoder.eval()
        return self._cache["text_encoder"]

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """CLIP ids with BOS and EoT, unpadded, truncated to 77 (EoT kept last, as the pipeline does)."""
        if not prompts:
            return []
        encoded = self._tokenizer()(list(prompts), truncation=True, max_length=MODEL_MAX_LENGTH)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        """Read-only float64 ``last_hidden_state`` rows per prompt, in the caller's order.

        ``padded=False``: rows BOS..EoT. ``padded=True``: all 77 rows of the prompt padded with the pad
        token, as StableDiffusionPipeline encodes it. Distinct prompts are sorted (by token count,
        then text) and run in chunks padded to their longest member; CLIP's causal mask makes each
        row depend only on the tokens up to it, so the padding does not change the kept rows.
        """
        prompts = list(prompts)
        if not prompts:
            return []
        import torch

        distinct = sorted(set(prompts))
        ids = dict(zip(distinct, self.tokenize(distinct)))
        order = sorted(distinct, key=lambda prompt: (len(ids[prompt]), prompt))
        encoder = self._text_encoder()
        pad_id = self._tokenizer().pad_token_id
        rows: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for start in range(0, len(order), _ENCODE_CHUNK):
                chunk = order[start : start + _ENCODE_CHUNK]
                width = MODEL_MAX_LENGTH if padded else max(len(ids[prompt]) for prompt in chunk)
                batch = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                for index, prompt in enumerate(chunk):
                    batch[index, : len(ids[prompt])] = torch.tensor(ids[prompt], dtype=torch.long)
                hidden = encoder(input_ids=batch).last_hidden_state
                for index, prompt in enumerate(chunk):
                    count = width if padded else len(ids[prompt])
                    array = hidden[index, :count].to(torch.float64).numpy().copy()
                    array.flags.writeable = False
                    rows[prompt] = array
        return [rows[prompt] for prompt in prompts]
