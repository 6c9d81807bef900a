"""Opening a model: what a location is (a diffusers folder, a single-file checkpoint or
``builtin:NAME[.safetensors]``), which family its files are, and the ``SDModel`` they make.

``open_model(location)`` reads only what the compiler needs: the safetensors header (site names and
shapes) and the text encoders' configs or shapes; ``compiler/models/sd.py`` reads the rest on demand.

Families (DESIGN.md §8, research/methods.md §7) are detected from the files by asking each family
of the registry (``families/``) whether it claims them; ``families/sd.py`` says how SD1, SD2 and
SDXL tell themselves apart. A single file's text encoder config is inferred from its shapes — CLIP
head width 64 (CLIP-L 12×64, OpenCLIP-H 16×64, bigG 20×64), ``quick_gelu`` for the HF-layout CLIP-L,
``gelu`` for OpenCLIP — unless its header carries ``erasec.text_encoders`` (written by
``erasec export-single-file`` for a model the rule does not describe).

``.ckpt``/``.pt`` pickles can run code when unpickled: refused unless ``allow_pickle``, and then
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from erasec.ir import KeySpace, LinearSite, ModelTarget, VerifyError
from erasec.ir.naming import LDM_UNET_PREFIX, diffusers_module_path

from . import bert
from .builtin import builtin_model_path
from ..errors import ModelError
from ..hub_cache import hub_id, snapshot_folder
from .families import FAMILIES
from .families import sd as sd_families
from .dit_files import dit_file, open_dit_file
from .dit_inputs import TextInputs
from .dit_open import open_dit_folder
from .protocol import TextModel
from .sd import SDModel
from .sd_components import TOKENIZER_OF
from .tensor_files import TensorFile, read_json, regular_file

logger = logging.getLogger(__name__)

_UNET_FILE = "diffusion_pytorch_model.safetensors"
_KV_WEIGHT = re.compile(r"^(?P<path>.+\.attn2\.to_(?P<role>[kv]))\.weight$")
_BLOCK_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _site_order(module_path: str) -> tuple:
    """Natural model order: down, mid, up; numeric indices as numbers; to_k before to_v."""
    parts = module_path.split(".")
    return (_BLOCK_ORDER.get(parts[0], len(_BLOCK_ORDER)),) + tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts
    )


def _text_hidden_size(config: dict, config_file: Path) -> int:
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int) or hidden <= 0:
        raise ModelError(f"{config_file}: hidden_size is {hidden!r}, not a positive integer; not a CLIP text config")
    return hidden


def _checked_override(family: str, sdxl_layout: bool, location: str) -> str:
    """A spec's ``family:``: trusted where detection would fail, refused where the files contradict it."""
    if family not in FAMILIES:
        raise ModelError(f"{location}: family {family!r} is not one of {', '.join(sorted(FAMILIES))}")
    if (len(FAMILIES[family].encoders) == 2) != sdxl_layout:
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
    claimed = [name for name, candidate in FAMILIES.items() if candidate.in_folder(path)]
    if not claimed:
        raise sd_families.unknown_folder(path)
    return _one(claimed)


def _one(claimed: list[str]) -> str:
    if len(claimed) > 1:  # a registry bug, not the user's files: each module keeps its families exclusive
        raise RuntimeError(f"families {claimed} all claim the same files")
    return claimed[0]


def _single_file_family(keys: set[str], location: str, override: str | None = None) -> str:
    if override is not None:
        return _checked_override(override, any(k.startswith("conditioner.embedders.1.") for k in keys), location)
    claimed = [name for name, candidate in FAMILIES.items() if candidate.in_single_file(keys)]
    if claimed:
        return _one(claimed)
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


def open_model(
    location: str,
    *,
    cache_dir: Path | None = None,
    allow_pickle: bool = False,
    pooled: bool = False,
    family: str | None = None,
    sequence_length: int | None = None,
    text_inputs: TextInputs | None = None,
    component: str | None = None,
    need_text: bool = True,
) -> TextModel:
    """Open a diffusers folder, a single-file checkpoint, ``builtin:NAME[.safetensors]`` or a hub id
    ``org/name[@revision]`` (or ``hf:org/name``) from the local Hugging Face cache (``hub_cache.py``).

    ``pooled``: add SDXL's pooled key space (``options.pooled``): the projected OpenCLIP-bigG pooled
    embedding and the first columns of ``add_embedding.linear_1`` that read it; for FLUX and SD3 the
    pooled vector and ``time_text_embed.text_embedder.linear_1``. ``family``: the spec's ``family:``,
    used instead of detection (checked against the files' layout). ``sequence_length``: a diffusion
    transformer's T5 padding (the spec's ``options.sequence_length``; its pipeline's default if None).
    A folder with ``transformer/`` is a diffusion transformer (``dit_open.py``), and so is a
    single file with a DiT's native tensor names (``dit_files.py``). ``text_inputs``: a diffusion
    transformer's text encoders and tokenizers given apart from it (``dit_inputs.py``; the spec's
    ``text_encoders``/``tokenizers``). ``component``: which transformer of a DiT folder is edited
    (None: ``transformer``; Wan 2.2's ``transformer_2``); a single file is the one it holds.
    ``need_text=False``: a DiT single file whose text encoders are not at hand opens anyway, its text
    members raising the missing-encoder error when called (``erasec apply`` reads weights only).
    """
    if location.startswith("builtin:"):
        path = builtin_model_path(location.removeprefix("builtin:"), cache_dir)
    elif hub_id(location) is not None:  # org/name[@revision] from the local Hugging Face cache; a path wins
        path = snapshot_folder(location)
    else:
        path = Path(location).expanduser()
    if not path.exists() and not path.is_symlink():
        raise ModelError(
            f"{location}: no such file or folder; give a diffusers folder, a single-file .safetensors "
            "checkpoint or builtin:NAME (or a hub id ORG/NAME in the local Hugging Face cache)"
        )
    if path.is_dir() and (path / "transformer").is_dir():
        model = open_dit_folder(path, location, family=family, pooled=pooled, sequence_length=sequence_length,
                                inputs=text_inputs, component=component)
        return dataclasses.replace(model, cache_dir=cache_dir)
    tensors = None
    if not path.is_dir():
        tensors = _tensor_file(regular_file(path), location, allow_pickle)
        found = None if tensors.pickled else dit_file(tensors, family, location)
        if found is not None:
            model = open_dit_file(tensors, location, *found, pooled=pooled, sequence_length=sequence_length,
                                  inputs=text_inputs or TextInputs(), need_text=need_text)
            return dataclasses.replace(model, cache_dir=cache_dir)
    if text_inputs:
        raise ModelError(f"{location}: text_encoders/tokenizers apply to diffusion transformers (FLUX, Chroma, "
                         "SD3, Wan); this is not one")
    if sequence_length is not None:
        raise ModelError(f"{location}: options.sequence_length applies to diffusion transformers (T5 rows); "
                         "this is not one")
    if path.is_dir():
        model = _open_folder(path, location, family)
    else:
        model = _open_file(tensors, location, family)
    model = dataclasses.replace(model, cache_dir=cache_dir)
    if pooled:
        model = _with_pooled_space(model)
    logger.debug("opened %s (%s, %s): %d sites", location, model.family, model.layout, len(model.target.sites))
    return model


def _open_folder(path: Path, location: str, family: str | None = None) -> SDModel:
    family = _folder_family(path, location, family)
    space_name, encoders = FAMILIES[family].key_space, FAMILIES[family].encoders
    if bert.is_bert(read_json(path / "text_encoder" / "config.json")):
        space_name = "minilm"
    dim = 0
    for component, _, _ in encoders:
        config_file = path / component / "config.json"
        dim += _text_hidden_size(read_json(config_file), config_file)
    for component, _, _ in encoders:
        tokenizer = path / TOKENIZER_OF[component]
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


def _tensor_file(path: Path, location: str, allow_pickle: bool) -> TensorFile:
    pickled = path.suffix.lower() in _PICKLE_SUFFIXES
    if pickled and not allow_pickle:
        raise ModelError(
            f"{location}: a {path.suffix} pickle can run arbitrary code when loaded, so erasec does not open it; "
            "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
        )
    return TensorFile(path, pickled=pickled)


def _open_file(tensors: TensorFile, location: str, family: str | None = None) -> SDModel:
    path = tensors.path
    family = _single_file_family(set(tensors.shapes), location, family)
    space_name = FAMILIES[family].key_space
    dim = FAMILIES[family].text_width(tensors.shapes, location)
    unet = {k.removeprefix(LDM_UNET_PREFIX): v for k, v in tensors.shapes.items() if k.startswith(LDM_UNET_PREFIX)}

    def to_diffusers(ldm_path: str) -> str:
        try:
            return diffusers_module_path(ldm_path)
        except VerifyError as error:
            raise ModelError(f"{location}: {error}") from None

    sites = _sites(unet, dim, path, to_diffusers)
    return _model(location, path, "single-file", family, space_name, dim, sites, path, tensors)


def _model(location, path, layout, family, space_name, dim, sites, weights_file, tensors) -> SDModel:
    encoder = "+".join(component for component, _, _ in FAMILIES[family].encoders)
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
    family = FAMILIES[model.family]
    if not family.pooled:
        raise ModelError(f"{model.location}: options.pooled: only SDXL has a pooled text path; this is {model.family}")
    dim = pooled_width(model)
    probe = LinearSite(module_path=POOLED_MODULE, out_features=1, in_features=1, role="pooled")
    shape = model._file.shapes.get(model.weight_name(probe))
    if not isinstance(dim, int) or shape is None or len(shape) != 2 or shape[1] <= dim:
        raise ModelError(
            f"{model.location}: options.pooled: no {POOLED_MODULE} reading a {dim}-wide pooled embedding; "
            "not an SDXL base UNet"
        )
    site = LinearSite(module_path=POOLED_MODULE, out_features=shape[0], in_features=dim, role="pooled",
                      full_in_features=shape[1])
    space = KeySpace(name=POOLED_SPACE, dim=dim, encoder=f"{family.pooled_encoder}.text_embeds", sites=(site,))
    target = ModelTarget(family=model.family, name=model.target.name, spaces=(*model.target.spaces, space))
    return dataclasses.replace(model, target=target)  # loads nothing of the model's: replace starts a fresh memo


def pooled_width(model: SDModel) -> int | None:
    """The width of the pooled text embedding (``text_embeds``): its encoder's ``projection_dim``,
    or a single file's ``text_projection`` width; None when neither says (or no pooled path)."""
    component = FAMILIES[model.family].pooled_encoder
    if component is None:
        return None
    if model.layout == "diffusers":
        return read_json(model.path / component / "config.json").get("projection_dim")
    prefix = FAMILIES[model.family].single_file_encoder(component).prefix
    shape = model._file.shapes.get(prefix + "text_projection")
    return shape[1] if shape else None
