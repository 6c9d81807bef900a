"""Where an ``SDModel``'s tokenizers and text encoders come from (``sd.py`` memoises them).

A folder's own tokenizer and encoder folders (a BERT encoder: the semantic test bed), or for a
single file erasec's CLIP vocabulary padding with the encoder's pad token (written once into the
cache) and the encoder read from the file's tensors (``text_encoders.load_single_file_encoder``).

Each function takes an opened ``SDModel`` (``sd.py``), unannotated: ``sd.py`` imports this module.
"""

from __future__ import annotations


from . import text_encoders
from ..errors import ModelError
from . import bert
from .cache_dir import cache_root, cached
from .tensor_files import TensorFile, first_line, read_json
from .tokenizer import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN, load_clip_tokenizer, remembered_tokenizer, write_clip_tokenizer


TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
_PAD_NAMES = {EOS_TOKEN: "eot", OPEN_CLIP_PAD_TOKEN: "bang"}


def load_tokenizer(model, component: str):
    """The tokenizer of ``model``'s ``component`` encoder."""
    if model.layout == "diffusers":
        folder = model.path / TOKENIZER_OF[component]
    else:
        folder = shipped_clip_folder({c: p for c, _, p in model.encoders}[component], model.cache_dir)
    load = bert.load_bert_tokenizer if (folder / "vocab.txt").is_file() else load_clip_tokenizer
    memo = cache_root(model.cache_dir) / "tokenizers"
    return remembered_tokenizer(folder, load, memo)


def shipped_clip_folder(pad: str, cache_dir):
    """erasec's CLIP vocabulary padding with ``pad``, written once into the cache: the tokenizer of
    a CLIP encoder that came without one (a single file's)."""
    return cached(
        "tokenizers", f"clip-pad-{_PAD_NAMES[pad]}-v1", lambda path: write_clip_tokenizer(path, pad_token=pad),
        cache_dir, folder=True,
    )


def load_text_encoder(model, component: str):
    """``model``'s ``component`` text encoder, loaded (not yet in eval mode)."""
    if model.layout != "diffusers":
        return text_encoders.load_single_file_encoder(model._file, model.family, component)
    from transformers import CLIPTextConfig

    folder = model.path / component
    if bert.is_bert(read_json(folder / "config.json")):
        return bert.load_bert_encoder(folder)
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ModelError(
            f"{folder}: expected one .safetensors weights file, found {len(files)}; erasec reads no .bin pickles"
        )
    try:
        with text_encoders.config_errors(folder / "config.json"):
            config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
    except OSError as error:
        raise ModelError(f"{folder}: cannot read the CLIP text config ({first_line(error)})") from error
    weights = TensorFile(files[0], pickled=False)
    state = weights.tensors([k for k in weights.shapes if not k.endswith("position_ids")])
    return text_encoders.assemble_clip(component, config, {k.removeprefix("text_model."): v for k, v in state.items()}, folder)
