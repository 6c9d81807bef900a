"""The model frontend: SD1.x, SD2.x and SDXL, as diffusers folders or single-file checkpoints.

``open_model(location)`` reads only what the compiler needs: the safetensors header (site names and
shapes) and the text encoders' configs or shapes. The cross-attention ``to_k``/``to_v`` tensors are
read on request by name; the UNet is never built. Text encoders load on the first ``encode``.

Families (DESIGN.md §8, research/methods.md §7), detected from the files:

* ``sd1``: CLIP-L final hidden state (after the final layer norm), d=768, 16 attn2 layers;
* ``sd2``: OpenCLIP-H as diffusers converts it (the penultimate block's output through the final
  layer norm, which is ``last_hidden_state`` of the 23-layer encoder), d=1024, 16 attn2 layers; its
  tokenizer pads with ``!`` (id 0), not EoT, so padded rows differ from SD1's;
* ``sdxl``: ``concat(text_encoder.hidden_states[-2], text_encoder_2.hidden_states[-2])`` — both
  penultimate, no final layer norm — d=2048, 70 attn2 layers; ``tokenizer_2`` pads with ``!``.

A folder is SDXL when it has ``text_encoder_2/``; otherwise SD2 when its text encoder uses ``gelu``
(OpenCLIP) and SD1 when it uses ``quick_gelu`` (OpenAI CLIP). A single file is recognised by its text
encoder prefixes (research/ecosystem.md §3.1). A single file's text encoder config is inferred from
its shapes — CLIP head width 64 (CLIP-L 12×64, OpenCLIP-H 16×64, bigG 20×64), ``quick_gelu`` for the
HF-layout CLIP-L, ``gelu`` for OpenCLIP — unless its header carries ``erasec.text_encoders`` (written
by ``erasec export-single-file`` for a model the rule does not describe). Tokenizers come from the
folder, or for a single file from the CLIP vocabulary shipped with erasec: never from a hub.

``.ckpt``/``.pt`` pickles can run code when unpickled: refused unless ``allow_pickle``, and then
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from erasec.ir import KeySpace, LinearSite, ModelTarget, VerifyError
from erasec.ir.naming import LDM_UNET_PREFIX, checkpoint_weight_name, diffusers_module_path

from . import layout as layouts
from . import semantic, text_encoders
from .builtin import builtin_model_path, cache_root, cached
from .errors import ModelError
from .tensor_files import LazyWeights, TensorFile, first_line
from .tokenizer import (
    EOS_TOKEN,
    MODEL_MAX_LENGTH,
    OPEN_CLIP_PAD_TOKEN,
    load_clip_tokenizer,
    remembered_tokenizer,
    write_clip_tokenizer,
)

logger = logging.getLogger(__name__)

Layout = Literal["diffusers", "single-file"]
HiddenState = Literal["last", "penultimate"]

_UNET_FILE = "diffusion_pytorch_model.safetensors"
_KV_WEIGHT = re.compile(r"^(?P<path>.+\.attn2\.to_(?P<role>[kv]))\.weight$")
_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_ENCODE_CHUNK = 64
_GRAM_BLOCK = 1024  # rows of a K/V matrix widened to float64 at a time by site_gram
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# family -> (key space name, ((component, hidden state, tokenizer pad token), ...))
FAMILIES: dict[str, tuple[str, tuple[tuple[str, HiddenState, str], ...]]] = {
    "sd1": ("clip-l", (("text_encoder", "last", EOS_TOKEN),)),
    "sd2": ("open-clip-h", (("text_encoder", "last", OPEN_CLIP_PAD_TOKEN),)),
    "sdxl": (
        "clip-l+bigg",
        (("text_encoder", "penultimate", EOS_TOKEN), ("text_encoder_2", "penultimate", OPEN_CLIP_PAD_TOKEN)),
    ),
}
_TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
_PAD_NAMES = {EOS_TOKEN: "eot", OPEN_CLIP_PAD_TOKEN: "bang"}


def _site_order(module_path: str) -> tuple:
    """Natural model order: down, mid, up; numeric indices as numbers; to_k before to_v."""
    parts = module_path.split(".")
    return (_BLOCK_ORDER.get(parts[0], len(_BLOCK_ORDER)),) + tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts
    )


KV_CACHE_BYTES = 512 * 2**20
# --- layouts ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file; the component needs its config.json") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: unreadable ({first_line(error)})") from error
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def _text_hidden_size(config: dict, config_file: Path) -> int:
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int) or hidden <= 0:
        raise ModelError(f"{config_file}: hidden_size is {hidden!r}, not a positive integer; not a CLIP text config")
    return hidden


def _checked_override(family: str, sdxl_layout: bool, location: str) -> str:
    """A spec's ``family:``: trusted where detection would fail, refused where the files contradict it."""
    if family not in FAMILIES:
        raise ModelError(f"{location}: family {family!r} is not one of {', '.join(sorted(FAMILIES))}")
    if (family == "sdxl") != sdxl_layout:
        found = "two text encoders (SDXL)" if sdxl_layout else "one text encoder"
        raise ModelError(f"{location}: family {family!r} does not fit the files, which have {found}; remove family:")
    return family


def _folder_family(path: Path, location: str, override: str | None = None) -> str:
    for component in ("unet", "text_encoder", "tokenizer"):
        if not (path / component).is_dir():
            raise ModelError(
                f"{location}: no {component}/ folder; expected a diffusers Stable Diffusion folder "
                "with unet/, text_encoder/ and tokenizer/ (or a single-file checkpoint)"
            )
    if (path / "text_encoder_2").is_dir() and not (path / "tokenizer_2").is_dir():
        raise ModelError(f"{location}: has text_encoder_2/ but no tokenizer_2/; an incomplete SDXL folder")
    if override is not None:
        return _checked_override(override, (path / "text_encoder_2").is_dir(), location)
    if (path / "text_encoder_2").is_dir():
        return "sdxl"
    config_file = path / "text_encoder" / "config.json"
    config = _read_json(config_file)
    if semantic.is_bert(config):
        return "sd1"  # the semantic test bed: an SD1-shaped UNet read by a BERT encoder
    act = config.get("hidden_act")
    if act == "gelu":
        return "sd2"
    if act == "quick_gelu":
        return "sd1"
    raise ModelError(
        f"{config_file}: hidden_act {act!r} is neither quick_gelu (SD1's CLIP-L) nor gelu (SD2's OpenCLIP-H); "
        "unknown architecture"
    )


def _single_file_family(keys: set[str], location: str, override: str | None = None) -> str:
    if override is not None:
        return _checked_override(override, any(k.startswith("conditioner.embedders.1.") for k in keys), location)
    if "conditioner.embedders.1.model.token_embedding.weight" in keys:
        return "sdxl"
    if "cond_stage_model.model.token_embedding.weight" in keys:
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    if any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise ModelError(
            f"{location}: unknown architecture: a UNet but no SD1 (cond_stage_model.transformer), SD2 "
            "(cond_stage_model.model) or SDXL base (conditioner.embedders.0/1) text encoder"
        )
    raise ModelError(
        f"{location}: unknown architecture: no model.diffusion_model.* tensors; not a Stable Diffusion checkpoint"
    )


def _sites(shapes: Mapping[str, tuple], dim: int, where: Path, to_diffusers) -> tuple[LinearSite, ...]:
    sites = []
    for name, shape in shapes.items():
        match = _KV_WEIGHT.match(name)
        if match is None:
            continue
        if len(shape) != 2:
            raise ModelError(f"{where}: {name} has shape {tuple(shape)}, expected a 2-D Linear weight")
        if shape[1] != dim:
            raise ModelError(
                f"{where}: {name} reads {shape[1]} features but the text encoders give {dim}; "
                "the UNet and text encoder do not belong together"
            )
        sites.append(
            LinearSite(module_path=to_diffusers(match["path"]), out_features=shape[0], in_features=shape[1],
                       role=match["role"])
        )
    if not sites:
        raise ModelError(f"{where}: no attn2.to_k/attn2.to_v weights; not a Stable Diffusion UNet")
    return tuple(sorted(sites, key=lambda site: _site_order(site.module_path)))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SDModel:
    """An opened SD1.x/SD2.x/SDXL model. Build it with ``open_model``; heavy parts load on demand."""

    location: str
    path: Path
    layout: Layout
    target: ModelTarget
    unet_weights_file: Path  # the file holding the K/V tensors (the single file itself for that layout)
    _file: TensorFile
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def open(cls, location: str, *, cache_dir: Path | None = None, allow_pickle: bool = False) -> SDModel:
        return open_model(location, cache_dir=cache_dir, allow_pickle=allow_pickle)

    @property
    def family(self) -> str:
        return self.target.family

    @property
    def encoders(self) -> tuple[tuple[str, HiddenState, str], ...]:
        return FAMILIES[self.family][1]

    def weight_name(self, site: LinearSite) -> str:
        """The K/V tensor's name in ``unet_weights_file``."""
        return checkpoint_weight_name(site, self.layout)

    def kv_weights(self) -> Mapping[str, np.ndarray]:
        """module_path -> read-only float32 (out, in) weight; half-precision files are upcast exactly.

        Held in memory when all of them take at most ``KV_CACHE_BYTES`` in fp32 (SD1/SD2: 0.2 GB);
        otherwise read from the file on each access, one at a time — SDXL's 140 matrices would take
        1.4 GB beside the text encoders (docs/performance.md).
        """
        weights = LazyWeights(
            self._file,
            {site.module_path: (self.weight_name(site), site.in_features) for site in self.target.sites},
        )
        if sum(4 * site.out_features * site.in_features for site in self.target.sites) > KV_CACHE_BYTES:
            return weights
        if "kv" not in self._cache:
            self._cache["kv"] = dict(weights.items())
        return dict(self._cache["kv"])

    def site_gram(self, space: KeySpace, roles: Sequence[str]) -> np.ndarray:
        """``Σ_l W0_lᵀ W0_l`` (d, d) in float64 over ``space``'s sites whose role is in ``roles``: the
        metric in which a change of the shared map T shows in all K/V outputs together. Reads every
        site of the space and refuses NaN or infinite weights."""
        from scipy.linalg.blas import dsyrk

        weights = self.kv_weights()
        upper = np.zeros((space.dim, space.dim), order="F")
        for site in space.sites:
            w0 = weights[site.module_path]
            if not np.all(np.isfinite(w0)):
                raise ModelError(f"{self.location}: {site.weight_name} contains NaN or infinity; the model file is damaged")
            if site.role not in roles:
                continue
            # rank-k updates of the upper triangle, a block of rows widened to float64 at a time: half
            # the flops of W0ᵀW0 and no float64 copy of the whole matrix (SDXL: 166,400 × 2048)
            for start in range(0, w0.shape[0], _GRAM_BLOCK):
                block = np.asarray(w0[start : start + _GRAM_BLOCK], dtype=np.float64)
                upper = dsyrk(1.0, block.T, beta=1.0, c=upper, trans=0, lower=0, overwrite_c=1)
        upper = np.triu(upper)
        return upper + np.triu(upper, 1).T

    # --- text ---------------------------------------------------------------------------------------

    def _tokenizer(self, component: str = "text_encoder"):
        key = f"tokenizer:{component}"
        if key not in self._cache:
            if self.layout == "diffusers":
                folder = self.path / _TOKENIZER_OF[component]
            else:
                pad = dict((c, p) for c, _, p in self.encoders)[component]
                folder = cached(
                    "tokenizers",
                    f"clip-pad-{_PAD_NAMES[pad]}-v1",
                    lambda path: write_clip_tokenizer(path, pad_token=pad),
                    self._cache.get("cache_dir"),
                    folder=True,
                )
            load = semantic.load_bert_tokenizer if (folder / "vocab.txt").is_file() else load_clip_tokenizer
            memo = cache_root(self._cache.get("cache_dir")) / "tokenizers"
            self._cache[key] = remembered_tokenizer(folder, load, memo)
        return self._cache[key]

    def _text_encoder(self, component: str):
        key = f"encoder:{component}"
        if key not in self._cache:
            self._cache[key] = (
                self._folder_encoder(component) if self.layout == "diffusers" else self._file_encoder(component)
            ).eval()
        return self._cache[key]

    def _folder_encoder(self, component: str):
        from transformers import CLIPTextConfig

        folder = self.path / component
        if semantic.is_bert(_read_json(folder / "config.json")):
            return semantic.load_bert_encoder(folder)
        files = sorted(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise ModelError(
                f"{folder}: expected one .safetensors weights file, found {len(files)}; erasec reads no .bin pickles"
            )
        try:
            config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
        except (OSError, ValueError) as error:
            raise ModelError(f"{folder}: cannot read the CLIP text config ({first_line(error)})") from error
        weights = TensorFile(files[0], pickled=False)
        state = weights.tensors([k for k in weights.shapes if not k.endswith("position_ids")])
        return text_encoders.assemble_clip(component, config, {k.removeprefix("text_model."): v for k, v in state.items()}, folder)

    def _file_encoder(self, component: str):
        return text_encoders.load_single_file_encoder(self._file, self.family, component)

    def release_text_encoders(self) -> None:
        """Drop the loaded text encoders (they load again if asked); tokenizers stay."""
        for key in [key for key in self._cache if key.startswith("encoder:")]:
            del self._cache[key]

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """CLIP ids with BOS and EoT, unpadded, truncated to 77 (EoT kept last, as the pipeline does)."""
        return self._tokenize(prompts, "text_encoder")

    def _tokenize(self, prompts: Sequence[str], component: str) -> list[list[int]]:
        if not prompts:
            return []
        encoded = self._tokenizer(component)(list(prompts), truncation=True, max_length=MODEL_MAX_LENGTH)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        """Read-only float64 key rows per prompt, in the caller's order (the family's key space).

        ``padded=False``: rows BOS..EoT. ``padded=True``: all 77 rows of the prompt padded with each
        encoder's own pad token, as the diffusers pipelines encode it. Distinct prompts are sorted (by
        token count, then text) and run in chunks padded to their longest member; CLIP's causal mask
        makes each row depend only on the tokens up to it, so the padding does not change the kept rows
        beyond the last bits of fp32: the kernels round differently with a batch's width and size, so
        a row can differ by an ulp with the company its prompt keeps (docs/patch-format.md, Determinism).
        """
        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        parts = [self._encode_with(distinct, component, hidden, padded) for component, hidden, _ in self.encoders]
        rows = {}
        for prompt in distinct:
            array = np.concatenate([part[prompt] for part in parts], axis=1)
            array.flags.writeable = False
            rows[prompt] = array
        return [rows[prompt] for prompt in prompts]

    def encode_pooled(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Read-only float64 pooled rows (``text_encoder_2``'s ``text_embeds``), one per prompt.

        As StableDiffusionXLPipeline.encode_prompt makes them: ids padded to 77 with tokenizer_2's pad
        token, the projected state at the EoT position (causal, so padding does not change it).
        """
        import torch

        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        ids = dict(zip(distinct, self._tokenize(distinct, "text_encoder_2")))
        encoder = self._text_encoder("text_encoder_2")
        pad_id = self._tokenizer("text_encoder_2").pad_token_id
        rows: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for start in range(0, len(distinct), _ENCODE_CHUNK):
                chunk = distinct[start : start + _ENCODE_CHUNK]
                batch = torch.full((len(chunk), MODEL_MAX_LENGTH), pad_id, dtype=torch.long)
                for index, prompt in enumerate(chunk):
                    batch[index, : len(ids[prompt])] = torch.tensor(ids[prompt], dtype=torch.long)
                embeds = encoder(input_ids=batch).text_embeds
                for index, prompt in enumerate(chunk):
                    array = embeds[index].to(torch.float64).numpy().copy()
                    array.flags.writeable = False
                    rows[prompt] = array
        return [rows[prompt] for prompt in prompts]

    def _encode_with(self, distinct: list[str], component: str, hidden: HiddenState, padded: bool) -> dict:
        import torch

        ids = dict(zip(distinct, self._tokenize(distinct, component)))
        order = sorted(distinct, key=lambda prompt: (len(ids[prompt]), prompt))
        encoder = self._text_encoder(component)
        pad_id = self._tokenizer(component).pad_token_id
        rows: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for start in range(0, len(order), _ENCODE_CHUNK):
                chunk = order[start : start + _ENCODE_CHUNK]
                width = MODEL_MAX_LENGTH if padded else max(len(ids[prompt]) for prompt in chunk)
                batch = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                for index, prompt in enumerate(chunk):
                    batch[index, : len(ids[prompt])] = torch.tensor(ids[prompt], dtype=torch.long)
                extra = {}
                if encoder.config.model_type == "bert":  # bidirectional: padding must be masked
                    extra["attention_mask"] = torch.stack(
                        [torch.arange(width) < len(ids[prompt]) for prompt in chunk]
                    ).long()
                output = encoder(input_ids=batch, output_hidden_states=hidden == "penultimate", **extra)
                states = output.last_hidden_state if hidden == "last" else output.hidden_states[-2]
                for index, prompt in enumerate(chunk):
                    count = width if padded else len(ids[prompt])
                    rows[prompt] = states[index, :count].to(torch.float64).numpy().copy()
        return rows


SD1Model = SDModel  # the name of the SD1-only frontend this generalises


def open_model(
    location: str,
    *,
    cache_dir: Path | None = None,
    allow_pickle: bool = False,
    pooled: bool = False,
    family: str | None = None,
) -> SDModel:
    """Open a diffusers folder, a single-file checkpoint or ``builtin:NAME[.safetensors]``.

    ``pooled``: add SDXL's pooled key space (``options.pooled``): the projected OpenCLIP-bigG pooled
    embedding and the first columns of ``add_embedding.linear_1`` that read it. ``family``: the
    spec's ``family:``, used instead of detection (checked against the files' layout).
    """
    if location.startswith("builtin:"):
        path = builtin_model_path(location.removeprefix("builtin:"), cache_dir)
    else:
        path = Path(location).expanduser()
    if not path.exists():
        raise ModelError(
            f"{location}: no such file or folder; give a diffusers folder, a single-file .safetensors "
            "checkpoint or builtin:NAME"
        )
    if path.is_dir():
        model = _open_folder(path, location, family)
    else:
        model = _open_file(path, location, allow_pickle, family)
    model._cache["cache_dir"] = cache_dir
    if pooled:
        model = _with_pooled_space(model)
    logger.debug("opened %s (%s, %s): %d sites", location, model.family, model.layout, len(model.target.sites))
    return model


def _open_folder(path: Path, location: str, family: str | None = None) -> SDModel:
    family = _folder_family(path, location, family)
    space_name, encoders = FAMILIES[family]
    if semantic.is_bert(_read_json(path / "text_encoder" / "config.json")):
        space_name = "minilm"
    dim = 0
    for component, _, _ in encoders:
        config_file = path / component / "config.json"
        dim += _text_hidden_size(_read_json(config_file), config_file)
    for component, _, _ in encoders:
        tokenizer = path / _TOKENIZER_OF[component]
        has_pair = (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()
        has_pair = has_pair or (tokenizer / "vocab.txt").is_file()  # BERT WordPiece (minilm-sd1)
        if not has_pair and not (tokenizer / "tokenizer.json").is_file():
            raise ModelError(f"{tokenizer}: no tokenizer files; expected vocab.json and merges.txt, or tokenizer.json")
    unet_file = path / "unet" / _UNET_FILE
    if not unet_file.is_file():
        raise ModelError(
            f"{unet_file}: no such file; erasec reads only safetensors (.bin pickles are not read), "
            "re-save the UNet with safe_serialization=True"
        )
    tensors = TensorFile(unet_file, pickled=False)
    sites = _sites(tensors.shapes, dim, unet_file, lambda name: name)
    return _model(location, path, "diffusers", family, space_name, dim, sites, unet_file, tensors)


def _open_file(path: Path, location: str, allow_pickle: bool, family: str | None = None) -> SDModel:
    pickled = path.suffix.lower() in _PICKLE_SUFFIXES
    if pickled and not allow_pickle:
        raise ModelError(
            f"{location}: a {path.suffix} pickle can run arbitrary code when loaded, so erasec does not open it; "
            "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
        )
    tensors = TensorFile(path, pickled=pickled)
    family = _single_file_family(set(tensors.shapes), location, family)
    space_name, _ = FAMILIES[family]
    if family == "sd1":
        prefix = layouts.CLIP_PREFIXES["sd1"][0]
        names = [f"{prefix}text_model.embeddings.token_embedding.weight", f"{prefix}embeddings.token_embedding.weight"]
        widths = [tensors.shapes[n][1] for n in names if n in tensors.shapes]
    elif family == "sd2":
        widths = [tensors.shapes["cond_stage_model.model.token_embedding.weight"][1]]
    else:
        first = layouts.CLIP_PREFIXES["sdxl"][0] + "text_model.embeddings.token_embedding.weight"
        widths = [
            tensors.shapes[name][1]
            for name in (first, "conditioner.embedders.1.model.token_embedding.weight")
            if name in tensors.shapes
        ]
        if len(widths) != 2:
            raise ModelError(f"{location}: an SDXL checkpoint without conditioner.embedders.0 (CLIP-L); incomplete")
    if not widths:
        raise ModelError(f"{location}: the SD1 text encoder has no token embedding; incomplete checkpoint")
    dim = sum(widths)
    unet = {k.removeprefix(LDM_UNET_PREFIX): v for k, v in tensors.shapes.items() if k.startswith(LDM_UNET_PREFIX)}

    def to_diffusers(ldm_path: str) -> str:
        try:
            return diffusers_module_path(ldm_path)
        except VerifyError as error:
            raise ModelError(f"{location}: {error}") from None

    sites = _sites(unet, dim, path, to_diffusers)
    return _model(location, path, "single-file", family, space_name, dim, sites, path, tensors)


def _model(location, path, layout, family, space_name, dim, sites, weights_file, tensors) -> SDModel:
    encoder = "+".join(component for component, _, _ in FAMILIES[family][1])
    space = KeySpace(name=space_name, dim=dim, encoder=encoder, sites=sites)
    target = ModelTarget(family=family, name=location, spaces=(space,))
    return SDModel(
        location=location, path=path, layout=layout, target=target, unet_weights_file=weights_file, _file=tensors
    )


POOLED_SPACE = "pooled"
POOLED_MODULE = "add_embedding.linear_1"


def _with_pooled_space(model: SDModel) -> SDModel:
    """The model with SDXL's second key space: the pooled text embedding → ``add_embedding.linear_1``.

    The SDXL UNet adds ``linear_2(act(linear_1([pooled ; time_ids embeddings])))`` to its time
    embedding; ``pooled`` is ``text_encoder_2``'s projected EoT state (research/methods.md §7).
    Only the pooled columns are a key space; the size/crop columns keep W0.
    """
    if model.family != "sdxl":
        raise ModelError(f"{model.location}: options.pooled: only SDXL has a pooled text path; this is {model.family}")
    if model.layout == "diffusers":
        config_file = model.path / "text_encoder_2" / "config.json"
        dim = _read_json(config_file).get("projection_dim")
    else:
        shape = model._file.shapes.get(layouts.OPEN_CLIP_PREFIXES["sdxl"] + "text_projection")
        dim = shape[1] if shape else None
    probe = LinearSite(module_path=POOLED_MODULE, out_features=1, in_features=1, role="pooled")
    shape = model._file.shapes.get(model.weight_name(probe))
    if not isinstance(dim, int) or shape is None or len(shape) != 2 or shape[1] <= dim:
        raise ModelError(
            f"{model.location}: options.pooled: no {POOLED_MODULE} reading a {dim}-wide pooled embedding; "
            "not an SDXL base UNet"
        )
    site = LinearSite(module_path=POOLED_MODULE, out_features=shape[0], in_features=dim, role="pooled",
                      full_in_features=shape[1])
    space = KeySpace(name=POOLED_SPACE, dim=dim, encoder="text_encoder_2.text_embeds", sites=(site,))
    target = ModelTarget(family=model.family, name=model.target.name, spaces=(*model.target.spaces, space))
    opened = SDModel(
        location=model.location, path=model.path, layout=model.layout, target=target,
        unet_weights_file=model.unet_weights_file, _file=model._file,
    )
    opened._cache.update(model._cache)
    return opened
