"""A small T5 SentencePiece-style tokenizer made in-process, offline and byte-reproducibly, for the
tiny DiT built-ins (FLUX's ``tokenizer_2``, Chroma's and Wan's ``tokenizer``, SD3's ``tokenizer_3``).

Real T5 tokenizers are a Unigram model over SentencePiece pieces with ``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, words split on whitespace and prefixed with ``▁``, and ``</s>`` appended to every
sequence. No PyPI wheel ships such a model, so one is made here from the text erasec already
ships (``compiler/data/prior-coco.txt`` and the suite CSVs):

1. ``tokenizers``' ``UnigramTrainer`` chooses the pieces. Its scores are not reproducible — it sums
   in hash-map order, and the characters it must keep get scores in that order too — but the set of
   pieces it keeps is.
2. The scores are then set here, deterministically, by two rounds of Viterbi (hard-EM) training:
   start from each piece's number of occurrences in the corpus, segment the corpus with the current
   scores, score each piece ``log((uses + ½) / (all uses + ½·pieces))``, rounded to 6 decimals.

The folder holds ``tokenizer.json`` (the backend ``transformers.T5TokenizerFast`` builds from that
vocabulary, so loading it reconstructs the same tokenizer) and hand-written ``tokenizer_config.json``
/ ``special_tokens_map.json`` (``save_pretrained`` records local paths). No sentinel
``<extra_id_*>`` tokens: the pipelines never use them.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelError
from .tensor_files import first_line

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, as in every T5 vocabulary
VOCAB_SIZE = 1000  # special tokens included; the built-in T5 encoders' vocab_size
MODEL_MAX_LENGTH = 512  # as the FLUX, SD3 and Wan tokenizer configs
_SCORE_DECIMALS = 6
_EM_ROUNDS = 2
_CORPUS_FILES = ("prior-coco.txt",)
_CORPUS_SUITES = ("artists", "coco", "i2p-nudity", "imagenette", "ring-a-bell-nudity", "ring-a-bell-van-gogh")


def corpus_lines() -> list[str]:
    """The training text, in a fixed order: the COCO prior's captions, then every suite's prompts,
    counterparts and concepts. A change to these files changes the tokenizer (bump the built-ins)."""
    data = importlib.resources.files("erasec.compiler") / "data"
    lines: list[str] = []
    for name in _CORPUS_FILES:
        text = (data / name).read_text(encoding="utf-8")
        lines += [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for suite in _CORPUS_SUITES:
        rows = csv.DictReader(io.StringIO((data / "suites" / f"{suite}.csv").read_text(encoding="utf-8")))
        lines += [row[column] for row in rows for column in ("prompt", "counterpart", "concept") if row[column]]
    return lines


@contextmanager
def _serial_tokenizers():
    # The trainer's piece choice measured reproducible with and without threads (15 runs each);
    # serial keeps it independent of the core count.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _t5_tokenizer(vocab: list[tuple[str, float]]):
    """``T5TokenizerFast`` over ``vocab`` (specials first), no sentinel tokens."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(
        vocab=vocab, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN,
        extra_ids=0, additional_special_tokens=[], model_max_length=MODEL_MAX_LENGTH,
    )


def _trained_pieces(lines: list[str], size: int) -> list[str]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    # The pre-tokenizer T5TokenizerFast builds, so pieces are what it will segment.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=size, special_tokens=list(SPECIAL_TOKENS), unk_token=UNK_TOKEN, show_progress=False
    )
    with _serial_tokenizers():
        tokenizer.train_from_iterator(lines, trainer=trainer)
    pieces = sorted(set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS))
    if len(pieces) + len(SPECIAL_TOKENS) != size:
        raise ModelError(
            f"the T5 tokenizer's training text yields {len(pieces) + len(SPECIAL_TOKENS)} tokens, not {size}; "
            "the packaged corpus (compiler/data) is damaged"
        )
    return pieces


def _scores(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values()) + 0.5 * len(counts)
    return {piece: round(math.log((count + 0.5) / total), _SCORE_DECIMALS) for piece, count in counts.items()}


def _vocab(scores: dict[str, float]) -> list[tuple[str, float]]:
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [(token, 0.0) for token in SPECIAL_TOKENS] + ordered


@functools.lru_cache(maxsize=2)
def _packaged_vocab(size: int) -> tuple[tuple[str, float], ...]:
    # trained once per process: every DiT built-in writes the same tokenizer
    return tuple(unigram_vocab(corpus_lines(), size))


def unigram_vocab(lines: list[str], size: int = VOCAB_SIZE) -> list[tuple[str, float]]:
    """The (piece, log-probability) list, specials first then by score: the trainer's pieces scored
    by Viterbi training from substring counts (module docstring)."""
    pieces = _trained_pieces(lines, size)
    words = " ".join("▁" + word for line in lines for word in line.split())
    scores = _scores({piece: words.count(piece) for piece in pieces})
    for _ in range(_EM_ROUNDS):
        backend = _t5_tokenizer(_vocab(scores)).backend_tokenizer
        uses = dict.fromkeys(pieces, 0)
        with _serial_tokenizers():
            encodings = backend.encode_batch(lines, add_special_tokens=False)
        for encoding in encodings:
            for token in encoding.tokens:
                if token in uses:
                    uses[token] += 1
        scores = _scores(uses)
    return _vocab(scores)


def write_t5_tokenizer(folder: Path, *, vocab_size: int = VOCAB_SIZE) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json: a folder
    ``T5TokenizerFast.from_pretrained`` and the DiT pipelines load, byte-identical on every run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _t5_tokenizer(list(_packaged_vocab(vocab_size)))
    (folder / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    special = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    config = {
        **special,
        "additional_special_tokens": [],
        "extra_ids": 0,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "T5Tokenizer",
    }
    for name, content in (("special_tokens_map.json", special), ("tokenizer_config.json", config)):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_t5_tokenizer(folder: Path):
    """``T5TokenizerFast`` from ``folder``, offline; a folder it cannot read is a one-line ModelError."""
    from transformers import T5TokenizerFast

    try:
        return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # the Rust tokenizers raise a bare Exception: add where, keep the text
        raise ModelError(f"{folder}: cannot load the T5 tokenizer ({first_line(error)})") from error
