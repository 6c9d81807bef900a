"""Reading a BERT text encoder and its WordPiece tokenizer, as an SD1-shaped model's encoder (the
semantic test bed ``builtin:minilm-sd1``, ``builtin/minilm.py``, writes one). The model readers ask
this module, not the built-in model factory, so reading a model never imports the factory."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .tokenizer import MODEL_MAX_LENGTH


def is_bert(config: dict) -> bool:
    return config.get("model_type") == "bert"


def load_bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    try:
        return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, model_max_length=MODEL_MAX_LENGTH)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the BERT tokenizer ({str(error).splitlines()[0]})") from error


def load_bert_encoder(folder: Path):
    import torch
    from transformers import BertModel

    try:
        return BertModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the BERT text encoder ({str(error).splitlines()[0]})") from error
