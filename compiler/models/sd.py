"""An opened Stable Diffusion model (SD1.x, SD2.x, SDXL): its K/V weights, their Gram, its tokenizers
and text encoders. ``compiler/models/open.py`` opens a location and builds one (``open_model``).

The cross-attention ``to_k``/``to_v`` tensors are read on request by name; the UNet is never built.
Text encoders load on the first ``encode``. Each family's key rows (DESIGN.md §8, research/methods.md §7):

* ``sd1``: CLIP-L final hidden state (after the final layer norm), d=768, 16 attn2 layers;
* ``sd2``: OpenCLIP-H as diffusers converts it (the penultimate block's output through the final
  layer norm, which is ``last_hidden_state`` of the 23-layer encoder), d=1024, 16 attn2 layers; its
  tokenizer pads with ``!`` (id 0), not EoT, so padded rows differ from SD1's;
* ``sdxl``: ``concat(text_encoder.hidden_states[-2], text_encoder_2.hidden_states[-2])`` — both
  penultimate, no final layer norm — d=2048, 70 attn2 layers; ``tokenizer_2`` pads with ``!``.

Tokenizers come from the folder, or for a single file from the CLIP vocabulary shipped with erasec:
never from a hub (``sd_components.py`` loads them and the text encoders).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from erasec.backends.checkpoint import CheckpointSource
from erasec.ir import LinearSite, ModelTarget
from erasec.ir.naming import checkpoint_weight_name

from . import sd_components, text_encoders
from .site_weights import SiteWeights
from .families import FAMILIES, Encoder, HiddenState
from .placement import CPU_PATH, Placement
from .tensor_files import TensorFile
from .tokenizer import MODEL_MAX_LENGTH

Layout = Literal["diffusers", "single-file"]

_ENCODE_CHUNK = 64



class _Loaded:
    """What an ``SDModel`` has loaded on demand: its K/V weights (when small), tokenizers and text
    encoders (with each thread's replica). Threads may encode at once (``embedding_cache``): loading
    and tokenizing hold ``lock``."""

    __slots__ = ("lock", "kv", "tokenizers", "encoders", "replicas")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.kv: dict[str, np.ndarray] | None = None
        self.tokenizers: dict[str, object] = {}
        self.encoders: dict[str, object] = {}
        self.replicas = threading.local()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SDModel(SiteWeights):
    """An opened SD1.x/SD2.x/SDXL model, a ``protocol.TextModel``; ``open.open_model`` builds it. Its
    fields say which model it is; what it loads on demand lives in ``_loaded``, a memo that
    ``dataclasses.replace`` starts anew (another target reads its own weights). ``cache_dir``: where
    tokenizer files are kept. ``placement``: where and how the text encoders run (``placement.py``)."""

    location: str
    path: Path
    layout: Layout
    target: ModelTarget
    unet_weights_file: Path  # the file holding the K/V tensors (the single file itself for that layout)
    _file: TensorFile
    cache_dir: Path | None = None
    placement: Placement = CPU_PATH
    _loaded: _Loaded = field(default_factory=_Loaded, init=False, repr=False)

    @property
    def family(self) -> str:
        return self.target.family

    @property
    def encoders(self) -> tuple[Encoder, ...]:
        return FAMILIES[self.family].encoders

    @property
    def padded_rows(self) -> int:
        return MODEL_MAX_LENGTH

    @property
    def sequence_length(self) -> None:
        """SD has no T5 padding (its CLIP rows are always 77)."""
        return None

    @property
    def component(self) -> str:
        """The one denoiser of an SD model."""
        return "unet"

    @property
    def other_experts(self) -> tuple[str, ...]:
        """No further denoiser (``DiTModel.other_experts``: Wan 2.2's second transformer)."""
        return ()

    def seen_rows(self, tokens: int) -> int:
        """Every padded row: cross-attention attends to all 77."""
        return MODEL_MAX_LENGTH

    def weight_name(self, site: LinearSite) -> str:
        """The K/V tensor's name in ``unet_weights_file``."""
        return checkpoint_weight_name(site, self.layout)

    def checkpoint_source(self) -> CheckpointSource:
        return CheckpointSource(
            layout=self.layout, root=self.path, weights_file=self.unet_weights_file, weight_name=self.weight_name
        )

    # --- text ---------------------------------------------------------------------------------------

    def _tokenizer(self, component: str = "text_encoder"):
        loaded = self._loaded
        with loaded.lock:
            if component not in loaded.tokenizers:
                loaded.tokenizers[component] = sd_components.load_tokenizer(self, component)
            return loaded.tokenizers[component]

    def _text_encoder(self, component: str):
        """This thread's copy of the ``component`` encoder: a ``text_encoders.replica`` of the loaded
        one (which itself never runs), so threads encoding at once share no module."""
        loaded = self._loaded
        with loaded.lock:
            if component not in loaded.encoders:
                loaded.encoders[component] = self.placement.place(sd_components.load_text_encoder(self, component).eval())
            own = loaded.replicas.__dict__
            if component not in own:
                own[component] = text_encoders.replica(loaded.encoders[component])
            return own[component]

    def release_text_encoders(self) -> None:
        """Drop the loaded text encoders (they load again if asked); tokenizers stay."""
        with self._loaded.lock:
            self._loaded.encoders.clear()
            self._loaded.replicas = threading.local()

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """CLIP ids with BOS and EoT, unpadded, truncated to 77 (EoT kept last, as the pipeline does)."""
        return self._tokenize(prompts, "text_encoder")

    def _tokenize(self, prompts: Sequence[str], component: str) -> list[list[int]]:
        if not prompts:
            return []
        tokenizer = self._tokenizer(component)
        with self._loaded.lock:  # a fast tokenizer sets its truncation on each call: one call at a time
            encoded = tokenizer(list(prompts), truncation=True, max_length=MODEL_MAX_LENGTH)
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
        """Read-only float64 pooled rows (the family's pooled encoder's ``text_embeds``: SDXL's
        ``text_encoder_2``), one per prompt.

        As StableDiffusionXLPipeline.encode_prompt makes them: ids padded to 77 with tokenizer_2's pad
        token, the projected state at the EoT position (causal, so padding does not change it).
        """
        import torch

        prompts = list(prompts)
        if not prompts:
            return []
        distinct = sorted(set(prompts))
        component = FAMILIES[self.family].pooled_encoder
        ids = dict(zip(distinct, self._tokenize(distinct, component)))
        encoder = self._text_encoder(component)
        pad_id = self._tokenizer(component).pad_token_id
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
