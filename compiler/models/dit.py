"""An opened diffusion transformer (FLUX.1, Chroma, SD3/SD3.5, Wan): its edited weights, their Gram,
its tokenizers and text encoders, and the rows its pipeline feeds the transformer.

``families/dit.py`` says where each family's prompt enters linearly. The rows of a prompt are the ones
the runtime feeds, read from each diffusers 0.42.1 pipeline's own prompt encoding (docs/models.md):

* ``flux``: T5 run on the ids padded to ``sequence_length`` **without** an attention mask
  (``FluxPipeline._get_t5_prompt_embeds``), so every padding row carries the prompt: all
  ``sequence_length`` rows are seen. Pooled: CLIP-L's ``pooler_output`` at 77 tokens.
* ``chroma``: T5 run with the tokenizer's mask; the transformer then masks every position after the
  first padding token (``ChromaPipeline``: ``mask_indices <= seq_lengths``), so the prompt's tokens
  and one padding row are seen.
* ``sd3``: 77 CLIP rows — CLIP-L ⊕ CLIP-G ``hidden_states[-2]`` concatenated, zero-padded (or cut) to
  the T5 width as ``torch.nn.functional.pad`` does — followed by the unmasked T5 rows; all are seen.
  A folder without ``text_encoder_3`` gives zero T5 rows, as the pipeline does. Pooled: both CLIPs'
  ``text_embeds``, concatenated.
* ``wan``: umT5 run with the mask, each prompt cut at its length and zero-filled to
  ``sequence_length`` (``WanPipeline._get_t5_prompt_embeds``, after its ``prompt_clean``), then
  ``condition_embedder.text_embedder`` (the transformer's own weights): the key rows ``to_k``/``to_v``
  read. The zero-filled rows all map to one constant row that every prompt shares.

``encode(padded=True)`` gives every row of the padded prompt as the runtime computes it;
``seen_rows(n)`` says how many of them, for a prompt of ``n`` token ids, the transformer attends to.
``encode(padded=False)`` gives the first ``n`` of them (the prompt's own tokens).

A single-file checkpoint (``dit_files.py``) keeps its authors' tensor names (``native_prefix`` set:
``txt_in``, ``blocks.N.cross_attn.k`` …, ``ir/dit_naming.py``); its text encoders and tokenizers,
and a folder's missing ones, come from ``inputs`` (``dit_inputs.TextSources``: the file itself or
separate files the user gives).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erasec.backends.checkpoint import CheckpointSource
from erasec.ir import LinearSite, ModelTarget
from erasec.ir.dit_naming import native_module_path

from ..errors import ModelError
from . import bert
from .site_weights import SiteWeights
from .dit_inputs import TextSources, load_tokenizer_path
from .families import FAMILIES, Encoder, Family
from .placement import CPU_PATH, Placement
from .sd_components import shipped_clip_folder
from .tensor_files import TensorFile, first_line, read_json
from .tokenizer import MODEL_MAX_LENGTH, load_clip_tokenizer

# Wan's text embedder in its native names (diffusers' convert_wan_transformer_to_diffusers)
_NATIVE_TENSORS = {"condition_embedder.text_embedder.linear_1": "text_embedding.0",
                   "condition_embedder.text_embedder.linear_2": "text_embedding.2"}
_T5_TYPES = ("t5", "umt5")


class _Loaded:
    """What a ``DiTModel`` has loaded on demand (as ``sd._Loaded``): weights, tokenizers, encoders."""

    __slots__ = ("encoders", "kv", "lock", "tokenizers")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.kv: dict[str, np.ndarray] | None = None
        self.tokenizers: dict[str, object] = {}
        self.encoders: dict[str, object] = {}


def tokenizer_folder(component: str) -> str:
    """``text_encoder_3`` → ``tokenizer_3``: diffusers' pairing of an encoder with its tokenizer."""
    return "tokenizer" + component.removeprefix("text_encoder")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DiTModel(SiteWeights):
    """An opened diffusion transformer, a ``protocol.TextModel``; ``open.open_model`` builds it.

    ``unet_weights_file``: the safetensors file of ``component`` holding the edited weights (the
    name the embedding cache and the checkpoint writer read for every model class).
    ``sequence_length``: the T5 padding the rows are computed at (the spec's
    ``options.sequence_length``, else the family's pipeline default).
    ``native_prefix``: a single file's, whose tensors keep their native names under it (None: a
    diffusers folder). ``inputs``: where the text encoders and tokenizers are when not all in the
    folder (None: every one in ``path``'s component folders).
    ``component``: the folder of the edited transformer (``transformer``, or Wan 2.2's low-noise
    ``transformer_2``: its own weights and text embedder, so its own key rows); a single file is the
    one transformer it holds. ``other_experts``: the folder's further transformers a build also edits,
    each into a patch of its own (``Family.experts``).
    """

    location: str
    path: Path
    layout: str
    target: ModelTarget
    unet_weights_file: Path
    _file: TensorFile
    sequence_length: int
    cache_dir: Path | None = None
    placement: Placement = CPU_PATH  # where and how the text encoders run (placement.py)
    native_prefix: str | None = None
    inputs: TextSources | None = None
    component: str = "transformer"
    other_experts: tuple[str, ...] = ()
    # opened without its text encoders (``open_model(need_text=False)``: erasec apply reads weights only):
    # the missing-encoder error every text member raises instead of reading rows from nothing
    text_missing: str | None = None
    _loaded: _Loaded = field(default_factory=_Loaded, init=False, repr=False)

    def _need_text(self) -> None:
        if self.text_missing is not None:
            raise ModelError(self.text_missing)

    @property
    def family(self) -> str:
        return self.target.family

    @property
    def _facts(self) -> Family:
        return FAMILIES[self.family]

    @property
    def encoders(self) -> tuple[Encoder, ...]:
        return self._facts.encoders

    @property
    def padded_rows(self) -> int:
        """Rows of a padded prompt: the T5 length, plus SD3's 77 CLIP rows."""
        return self.sequence_length + (MODEL_MAX_LENGTH if self._clip_components() else 0)

    def seen_rows(self, tokens: int) -> int:
        """How many leading rows of a padded prompt of ``tokens`` ids the transformer attends to
        (module docstring): all for FLUX and SD3, the tokens and one padding row for Chroma, the
        tokens for Wan (its padding rows are the constant row every prompt shares)."""
        rule = self._facts.text_rows
        if rule == "one_pad":
            return min(tokens + 1, self.sequence_length)
        if rule == "zero_filled":
            return min(tokens, self.sequence_length)
        return self.padded_rows

    def weight_name(self, site: LinearSite) -> str:
        if self.native_prefix is not None:
            return f"{self.native_prefix}{native_module_path(site.module_path, self.family)}.weight"
        return f"{site.module_path}.weight"

    def tensor_name(self, name: str) -> str:
        """A transformer tensor's name in the file: ``name`` (diffusers) in a folder, its native name
        under the prefix in a single file."""
        if self.native_prefix is None:
            return name
        module, _, leaf = name.rpartition(".")
        return f"{self.native_prefix}{_NATIVE_TENSORS[module]}.{leaf}"

    def text_encoder_pin(self) -> dict | None:
        self._need_text()
        return SiteWeights.text_encoder_pin(self)

    def checkpoint_source(self) -> CheckpointSource:
        return CheckpointSource(
            layout="single-file" if self.native_prefix is not None else "diffusers", root=self.path, weights_file=self.unet_weights_file, weight_name=self.weight_name
        )

    def release_text_encoders(self) -> None:
        with self._loaded.lock:
            self._loaded.encoders.clear()

    # --- text ---------------------------------------------------------------------------------------

    def _t5_component(self) -> str | None:
        """The T5 (or the test bed's BERT) encoder's component: the last of the family's encoders."""
        component = self.encoders[-1].component
        present = self.inputs.has(component) if self.inputs is not None else (self.path / component).is_dir()
        return component if present else None

    def _clip_components(self) -> tuple[str, ...]:
        """SD3's two CLIP encoders (the sequence's first 77 rows); none for the other families."""
        return tuple(encoder.component for encoder in self.encoders[:-1])

    def _tokenizer(self, component: str):
        loaded = self._loaded
        with loaded.lock:
            if component not in loaded.tokenizers:
                loaded.tokenizers[component] = self._load_tokenizer(component)
            return loaded.tokenizers[component]

    def _load_tokenizer(self, component: str):
        if self.inputs is None:
            return _load_tokenizer(self.path / tokenizer_folder(component))
        path = self.inputs.tokenizers[component]
        if path is None:  # erasec's CLIP BPE with the encoder's pad token (as for an SD single file)
            return load_clip_tokenizer(shipped_clip_folder(self.inputs.pads[component], self.cache_dir))
        clip = self._facts.encoder_slot(component).model_class.startswith("CLIP")
        return load_tokenizer_path(path, clip=clip) or _load_tokenizer(path)

    def _encoder(self, component: str):
        loaded = self._loaded
        with loaded.lock:
            if component not in loaded.encoders:
                if self.inputs is None:
                    loaded.encoders[component] = _load_encoder(self.path / component)
                elif self.inputs.from_file(component):
                    loaded.encoders[component] = self.inputs.load_encoder(component)
                else:
                    loaded.encoders[component] = _load_encoder(self.inputs.encoders[component].path)
                loaded.encoders[component] = self.placement.place(loaded.encoders[component])
            return loaded.encoders[component]

    def _clean(self, prompts: Sequence[str]) -> list[str]:
        """Wan's pipeline cleans each prompt (``prompt_clean``: ftfy when installed, HTML entities,
        whitespace) before tokenizing; the others tokenize the text as given."""
        if not self._facts.clean_prompts:
            return list(prompts)
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        return [prompt_clean(prompt) for prompt in prompts]

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """The ids of the space's first row family, unpadded: SD3's CLIP-L ids (BOS … EoT, ≤ 77), the
        others' T5 ids (… EOS, ≤ ``sequence_length``)."""
        self._need_text()
        if not prompts:
            return []
        clips = self._clip_components()
        component = clips[0] if clips else self._t5_component() or self.encoders[-1].component
        limit = MODEL_MAX_LENGTH if clips else self.sequence_length
        tokenizer = self._tokenizer(component)
        with self._loaded.lock:
            encoded = tokenizer(self._clean(prompts), truncation=True, max_length=limit)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, prompts: Sequence[str], *, padded: bool) -> list[np.ndarray]:
        """Read-only float64 rows per prompt (module docstring), in the caller's order."""
        self._need_text()
        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        full = self._padded_rows(distinct)
        counts = dict(zip(distinct, (len(ids) for ids in self.tokenize(distinct))))
        rows = {}
        for prompt in distinct:
            array = full[prompt] if padded else full[prompt][: counts[prompt]]
            array = np.ascontiguousarray(array)
            array.flags.writeable = False
            rows[prompt] = array
        return [rows[prompt] for prompt in prompts]

    def _padded_rows(self, prompts: list[str]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            t5 = self._t5_rows(prompts)
            clips = self._clip_components()
            if clips:
                parts = [self._clip_run(prompts, component)[0] for component in clips]
                clip = torch.cat(parts, dim=-1)
                clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
                t5 = torch.cat([clip, t5], dim=-2)
            if self._facts.text_projection is not None:
                t5 = self._text_embedder(t5)
            out = t5.to(torch.float64).numpy()
        return {prompt: out[index] for index, prompt in enumerate(prompts)}

    def _t5_rows(self, prompts: list[str]):
        """(batch, sequence_length, width) float32: the T5 rows as the family's pipeline computes them."""
        import torch

        component = self._t5_component()
        if component is None:  # SD3 without text_encoder_3: the pipeline feeds zero rows
            width = self.target.spaces[0].dim
            return torch.zeros((len(prompts), self.sequence_length, width))
        tokenizer = self._tokenizer(component)
        with self._loaded.lock:
            batch = tokenizer(
                self._clean(prompts), padding="max_length", max_length=self.sequence_length, truncation=True,
                return_tensors="pt",
            )
        encoder = self._encoder(component)
        ids, mask = batch.input_ids, batch.attention_mask
        rule = self._facts.text_rows
        if rule in ("one_pad", "zero_filled"):
            states = encoder(input_ids=ids, attention_mask=mask)[0]
        else:  # FLUX and SD3 run T5 without a mask: the padding rows carry the prompt
            states = encoder(input_ids=ids)[0]
        states = states.to(torch.float32)
        if rule == "zero_filled":  # cut at each prompt's length, zero-filled
            keep = (torch.arange(states.shape[1])[None, :] < mask.sum(dim=1)[:, None]).to(states.dtype)
            states = states * keep[:, :, None]
        return states

    def _clip_run(self, prompts: list[str], component: str):
        """One CLIP encoder on ids padded to 77: (``hidden_states[-2]``, its pooled output)."""
        import torch

        tokenizer = self._tokenizer(component)
        with self._loaded.lock:
            ids = tokenizer(prompts, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                            return_tensors="pt").input_ids
        output = self._encoder(component)(input_ids=ids, output_hidden_states=True)
        # SD3's CLIPTextModelWithProjection pools to text_embeds, FLUX's CLIPTextModel to pooler_output
        pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
        return output.hidden_states[-2].to(torch.float32), pooled.to(torch.float32)

    def _text_embedder(self, rows):
        """Wan's ``condition_embedder.text_embedder`` (PixArtAlphaTextProjection: linear_1, GELU-tanh,
        linear_2) with the transformer's own weights."""
        import torch

        prefix = self._facts.text_projection + "."
        names = [self.tensor_name(prefix + f"linear_{i}.{kind}") for i in (1, 2) for kind in ("weight", "bias")]
        tensors = {name: tensor.to(torch.float32) for name, tensor in self._file.tensors(names).items()}
        hidden = torch.nn.functional.linear(rows, tensors[names[0]], tensors[names[1]])
        hidden = torch.nn.functional.gelu(hidden, approximate="tanh")
        return torch.nn.functional.linear(hidden, tensors[names[2]], tensors[names[3]])

    def encode_pooled(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Read-only float64 pooled rows, one per prompt: FLUX's CLIP-L ``pooler_output``, SD3's
        CLIP-L ⊕ CLIP-G ``text_embeds`` (both at 77 padded tokens, as the pipelines make them)."""
        import torch

        self._need_text()

        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        components = self._clip_components() or (self._facts.pooled_encoder,)
        with torch.inference_mode():
            pooled = torch.cat([self._clip_run(distinct, component)[1] for component in components], dim=-1)
            out = pooled.to(torch.float64).numpy()
        rows = {}
        for index, prompt in enumerate(distinct):
            array = np.ascontiguousarray(out[index])
            array.flags.writeable = False
            rows[prompt] = array
        return [rows[prompt] for prompt in prompts]


def _load_tokenizer(folder: Path):
    """A folder's tokenizer, offline: CLIP's BPE, BERT's WordPiece (the test bed) or a T5 tokenizer."""
    if (folder / "vocab.txt").is_file():
        return bert.load_bert_tokenizer(folder)
    if (folder / "merges.txt").is_file():
        return load_clip_tokenizer(folder)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the tokenizer ({first_line(error)})") from error


def _load_encoder(folder: Path):
    """A text encoder folder's model in eval mode, fp32, offline and from safetensors only."""
    import torch

    config = read_json(folder / "config.json")
    kind = config.get("model_type")
    if bert.is_bert(config):
        return bert.load_bert_encoder(folder).eval()
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder}: no .safetensors weights; erasec reads no .bin pickles")
    import transformers

    if kind == "t5":
        cls = transformers.T5EncoderModel
    elif kind == "umt5":
        cls = transformers.UMT5EncoderModel
    elif kind == "clip_text_model":
        projected = "CLIPTextModelWithProjection" in (config.get("architectures") or ())
        cls = transformers.CLIPTextModelWithProjection if projected else transformers.CLIPTextModel
    else:
        raise ModelError(f"{folder}/config.json: model_type {kind!r} is not a T5, umT5 or CLIP text encoder")
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the text encoder ({first_line(error)})") from error
