"""The patch manifest: every ``str → str`` header key a patch carries (DESIGN.md §7).

``erasec.*`` keys describe the build; ``ss_*`` (kohya's minimum set plus name keys,
research/ecosystem.md §2.2; kohya patches only: A1111 lists a file with them as a LoRA it can apply,
and it applies nothing of a PEFT file, whose rank its ``lora_adapter_metadata`` config gives) and
``modelspec.*`` (Stability ModelSpec 1.0.1, §2.3) let UIs and hubs recognise the file; ``sshs_model_hash`` and ``modelspec.hash_sha256`` are the sha256 of the
tensor bytes, filled in by ``write_patch`` once those bytes exist, and ``erasec.digest`` covers
everything else (``patch_digest``). No timestamps, unless ``SOURCE_DATE_EPOCH`` is set, so builds
are byte-identical.

Format 2 (this one) added ``erasec.digest``. Format 1 files are refused rather than read without
it: a reader that accepted a missing digest would accept any file whose digest was stripped, so
the key would protect nothing (docs/patch-format.md, "Format versions").
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .manifest_checks import NETWORK_MODULES
from .safetensors_io import atomic_write, encode, header_bytes

FORMAT_VERSION = "2"
DIGEST_KEY = "erasec.digest"

_FAMILY_KEYS = {
    # family: (ss_v2, ss_base_model_version, modelspec.architecture, implementation, resolution)
    "sd1": ("False", "sd_v1", "stable-diffusion-v1/lora", "diffusers", "512x512"),
    # SD2: the 512 epsilon variant's ids; a v-prediction 768 base (SD2.x-768-v) is not told apart
    # by its weights (research/ecosystem.md §2.2, §2.3).
    "sd2": ("True", "sd_v2", "stable-diffusion-v2-512/lora", "diffusers", "512x512"),
    "sdxl": (
        "False",
        "sdxl_base_v1-0",
        "stable-diffusion-xl-v1-base/lora",
        "https://github.com/Stability-AI/generative-models",
        "1024x1024",
    ),
    # The diffusion transformers, as kohya sd-scripts writes them (library/flux_utils.py
    # MODEL_VERSION_FLUX_V1 / MODEL_VERSION_CHROMA, library/sai_model_spec.py ARCH_FLUX_1_UNKNOWN,
    # ARCH_FLUX_1_CHROMA, ARCH_SD3_M, IMPL_FLUX, IMPL_CHROMA; kohya-ss/sd-scripts@48d368f): the variant
    # (dev/schnell, SD3 Medium/3.5 Large) is not told apart, so the unversioned names. sd-scripts has
    # no Wan constants (musubi-tuner trains Wan): "wan" names the family.
    "flux": ("False", "flux1", "flux-1/lora", "https://github.com/black-forest-labs/flux", "1024x1024"),
    "chroma": ("False", "chroma", "chroma/lora", "https://huggingface.co/lodestones/Chroma", "1024x1024"),
    "sd3": ("False", "sd3", "stable-diffusion-3/lora", "diffusers", "1024x1024"),
    "wan": ("False", "wan", "wan/lora", "https://github.com/Wan-Video/Wan2.1", "832x480"),
}


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    name: str
    version: str
    compiler: str  # erasec version
    family: str
    model: str  # the base model location as the user named it
    spec_json: str  # canonical JSON of the resolved spec
    pipeline: str  # canonical pipeline string
    rank: int
    spaces: tuple[dict, ...]  # per key space: name, form, rank, layers, condition
    report: dict  # the build's evaluation summary
    base_pin: dict  # patches.pin.base_pin of the base tensors the patch touches
    text_encoder: dict | None = None  # text_encoder_pin of the base's text encoder(s)
    shared: str | None = None  # erasec.shared (patches/link.py): the factors of T − I
    link: str | None = None  # erasec.link (patches/link.py): the lowered rows, for compose
    extra: tuple[tuple[str, str], ...] = ()  # further erasec.* keys (e.g. erasec.derived_from)
    layout: str = "kohya"  # output.format of the tensors: kohya (with ss_* keys) or peft (without)
    # erasec.device: where the text encoder ran — {"kind": cpu|cuda, "dtype": fp32|bf16, "batch": n}
    # (compiler/models/placement.py); byte-identity is promised per placement. None: rows not encoded
    # by this build (compose replays the patches' recorded rows)
    device: dict | None = None
    # a diffusion transformer's T5 padding (rows per prompt) the patch was solved at, recorded in
    # erasec.base as sequence_length even when the spec left it to the pipeline's default: the rows
    # differ with the padding, so every command re-opens the model at it (docs/patch-format.md)
    sequence_length: int | None = None
    # the denoiser folder the patch edits, recorded in erasec.base as component for a family with several
    # (Wan 2.2: transformer or transformer_2, each its own text embedder, so its own patch); None: the one
    component: str | None = None

    def metadata(self) -> dict[str, str]:
        ss_v2, base_version, architecture, implementation, resolution = _FAMILY_KEYS[self.family]
        model_name = Path(self.model).name if not self.model.startswith("builtin:") else self.model
        metadata = {
            "erasec.format": FORMAT_VERSION,
            "erasec.name": self.name,
            "erasec.version": self.version,
            "erasec.compiler": self.compiler,
            "erasec.spec": self.spec_json,
            "erasec.pipeline": self.pipeline,
            "erasec.base": _json(
                {
                    "family": self.family,
                    "model": self.model,
                    **self.base_pin,
                    "text_encoder": self.text_encoder,
                    **({"sequence_length": self.sequence_length} if self.sequence_length is not None else {}),
                    **({"component": self.component} if self.component is not None else {}),
                }
            ),
            "erasec.spaces": _json(list(self.spaces)),
            "erasec.report": _json(self.report),
            **({"erasec.device": _json(self.device)} if self.device is not None else {}),
            **(
                {
                    "ss_v2": ss_v2,
                    "ss_base_model_version": base_version,
                    "ss_network_module": NETWORK_MODULES[self.family],
                    "ss_network_dim": str(self.rank),
                    "ss_network_alpha": str(self.rank),
                    "ss_network_args": "{}",
                    "ss_output_name": self.name,
                    "ss_sd_model_name": model_name,
                    "ss_training_comment": "compiled by erasec (closed-form concept erasure; no training)",
                }
                if self.layout == "kohya"
                else {}
            ),
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": architecture,
            "modelspec.implementation": implementation,
            "modelspec.title": f"{self.name} {self.version}",
            "modelspec.resolution": resolution,
            "modelspec.description": "concept-erasure patch compiled by erasec",
        }
        for key, value in (("erasec.shared", self.shared), ("erasec.link", self.link), *self.extra):
            if value is not None:
                metadata[key] = value
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch and epoch.isdigit():
            moment = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
            metadata["modelspec.date"] = moment.isoformat()
        return metadata


def patch_digest(metadata: Mapping[str, str], entries: Mapping[str, object], data_sha256: str) -> str:
    """``erasec.digest``: sha256 of one canonical JSON document holding every metadata key but the
    digest itself, the tensor index (names, dtypes, shapes, offsets: the tensor-bytes hash alone
    would not notice two same-shaped tensors swapping names) and the tensor-bytes sha256.
    ASCII-escaped, so any string the header's JSON can hold has one encoding."""
    document = {
        "metadata": {key: value for key, value in metadata.items() if key != DIGEST_KEY},
        "tensors": entries,
        "data_sha256": data_sha256,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def write_patch(path: Path, tensors: Mapping[str, object], metadata: Mapping[str, str]) -> int:
    """Write a patch atomically, adding the tensor-bytes hashes and, for an erasec patch (metadata
    with ``erasec.format``), ``erasec.digest`` after checking the file is one ``read_patch``
    accepts; returns the file size in bytes.

    The tensors are laid out once and their data section is hashed and written in place (a
    full-rank SDXL patch is 1.75 GB: each extra copy of it counted in the build's peak memory)."""
    entries, data = encode(tensors)
    digest = hashlib.sha256(data).hexdigest()
    full = {key: value for key, value in metadata.items() if key != DIGEST_KEY}
    full.update({"sshs_model_hash": digest, "modelspec.hash_sha256": "0x" + digest})
    if "erasec.format" in full:
        from .validate import check_patch  # the reader's rules: a patch erasec writes, it also reads

        check_patch(Path(path), entries, full, alphas=_alphas(tensors))
        full[DIGEST_KEY] = patch_digest(full, entries, digest)
    head = header_bytes(entries, full)
    atomic_write(Path(path), (head, data))
    return len(head) + len(data)


def _alphas(tensors: Mapping[str, object]):
    def alpha(name: str) -> float:
        return float(tensors[name])

    return alpha
