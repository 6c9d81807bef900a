"""The CLIP BPE tokenizer, built offline from the vocabulary file shipped in ``compiler/data``.

SD1.x tokenizes with OpenAI's CLIP BPE (research/perf-baseline.md §3). The original vocabulary
``bpe_simple_vocab_16e6.txt.gz`` (MIT, see ``data/LICENSE-clip-bpe.txt``) holds the merges; the
Hugging Face ``vocab.json`` / ``merges.txt`` pair is derived from it exactly as
``open_clip/tokenizer.py`` builds its encoder: 256 byte-level characters, the same with ``</w>``,
one token per merge (the first 49152 - 256 - 2 of them), then the two special tokens — 49,408 ids.

transformers 5 has only the ``tokenizers``-backed ``CLIPTokenizer`` (``CLIPTokenizerFast`` is an
alias of it); ``from_pretrained`` on these files yields the real CLIP ids. Constructing it directly
from ``vocab_file=``/``merges_file=`` keywords does not (the keywords are ignored and the ids are
garbage), so loading always goes through a folder.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import json
import logging
import shutil
from pathlib import Path

from ..errors import ModelError
from .tensor_files import first_line, regular_file

logger = logging.getLogger(__name__)

MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# SD2's tokenizer and SDXL's tokenizer_2 (OpenCLIP) pad with "!" (id 0); SD1's and SDXL's first
# tokenizer (OpenAI CLIP) pad with EoT. Padded rows depend on it (research/methods.md §7).
OPEN_CLIP_PAD_TOKEN = "!"
_VOCAB_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip: merges = merges[1 : 49152 - 256 - 2 + 1]; line 0 is a header.
_MERGES_END = 49152 - 256 - 2 + 1
_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (256 entries, byte order kept)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _read_merges() -> list[str]:
    resource = importlib.resources.files("erasec.compiler") / "data" / _VOCAB_RESOURCE
    lines = gzip.decompress(resource.read_bytes()).decode("utf-8").split("\n")
    return lines[1:_MERGES_END]


def _special_token(content: str) -> dict[str, object]:
    # The AddedToken form of an SD1.5 tokenizer/ folder (research/perf-baseline.md §3).
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_clip_tokenizer(folder: Path, *, pad_token: str = EOS_TOKEN) -> None:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json.

    ``pad_token``: ``EOS_TOKEN`` (SD1, SDXL ``tokenizer``) or ``OPEN_CLIP_PAD_TOKEN`` (SD2,
    SDXL ``tokenizer_2``); the vocabulary is the same BPE in all of them.

    The JSON is written by hand (sorted keys where order is free) so the folder is byte-identical
    on every run; ``save_pretrained`` in transformers 5 records local paths and flags instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _read_merges()
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    if len(tokens) != _VOCAB_SIZE:
        raise ModelError(
            f"{_VOCAB_RESOURCE}: derived {len(tokens)} tokens, expected {_VOCAB_SIZE}; the packaged vocabulary is damaged"
        )
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": _special_token(BOS_TOKEN),
        "eos_token": _special_token(EOS_TOKEN),
        "pad_token": pad_token,
        "unk_token": _special_token(EOS_TOKEN),
    }
    config = {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_special_token(BOS_TOKEN)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_special_token(EOS_TOKEN)},
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_special_token(EOS_TOKEN)},
    }
    for name, content in (("special_tokens_map.json", special), ("tokenizer_config.json", config)):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_clip_tokenizer(folder: Path):
    """A ``transformers.CLIPTokenizer`` read from ``folder`` without network access.

    Accepts the SD1.5 layout (vocab.json + merges.txt) or a transformers-5 save (tokenizer.json
    only). ``model_max_length`` is forced to 77: a folder without it in its config gets 1e30, and
    ``padding="max_length"`` then fails.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    check_tokenizer_files(folder)
    has_pair = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_pair and not (folder / "tokenizer.json").is_file():
        raise ModelError(
            f"{folder}: no tokenizer files; expected vocab.json and merges.txt, or tokenizer.json"
        )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(
            str(folder), local_files_only=True, model_max_length=MODEL_MAX_LENGTH
        )
    except Exception as error:  # the Rust tokenizers raise a bare Exception: add where, keep the text
        raise ModelError(f"{folder}: cannot load the CLIP tokenizer ({first_line(error)})") from error
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    logger.debug("loaded CLIP tokenizer from %s (vocab %d)", folder, len(tokenizer))
    return tokenizer


_JSON_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def check_tokenizer_files(folder: Path) -> None:
    """Refuse, naming the file, a tokenizer file that is not a regular file (a FIFO would block the
    load), a JSON file that is not a JSON object, or a ``merges.txt`` line that is not one merge (the
    Rust tokenizer's own errors name neither the file nor, for JSON, the problem)."""
    for name in (*_JSON_FILES, "merges.txt"):
        path = folder / name
        if not path.exists() and not path.is_symlink():
            continue
        try:
            text = regular_file(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelError(f"{path}: unreadable ({first_line(error)}); re-download the tokenizer") from None
        if name == "merges.txt":
            for number, line in enumerate(text.split("\n"), 1):
                if line and not line.startswith("#version") and len(line.split(" ")) != 2:
                    raise ModelError(f"{path}:{number}: {line[:40]!r} is not a merge of two tokens; re-download the tokenizer")
            continue
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ModelError(f"{path}: not valid JSON ({first_line(error)}); re-download the tokenizer") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: not a JSON object; re-download the tokenizer")


class FastTokenizer:
    """A tokenizer read back from its ``tokenizers`` serialisation and called as erasec calls a
    transformers tokenizer (right truncation to ``max_length``, special tokens added, no padding).

    transformers 5's CLIP and BERT tokenizers are this same Rust object behind a Python class; using
    it directly spares a build that encodes nothing (a warm rebuild) importing transformers, about
    a third of its start-up (docs/performance.md). ``test_fast_tokenizer_gives_transformers_ids``
    compares the ids on every shipped suite prompt.
    """

    def __init__(self, backend, pad_token_id: int) -> None:
        self._backend = backend
        self.pad_token_id = pad_token_id

    def __call__(self, texts, *, truncation: bool = True, max_length: int = MODEL_MAX_LENGTH) -> dict:
        if truncation:
            self._backend.enable_truncation(max_length=max_length, stride=0, strategy="longest_first", direction="right")
        else:
            self._backend.no_truncation()
        self._backend.no_padding()
        return {"input_ids": [encoding.ids for encoding in self._backend.encode_batch(list(texts), add_special_tokens=True)]}


def remembered_tokenizer(folder: Path, load, memo_folder: Path):
    """The tokenizer in ``folder``: ``load(folder)`` (transformers) the first time, then a
    ``FastTokenizer`` read from ``memo_folder``, keyed by the folder's file contents and the versions
    of transformers and tokenizers. A tokenizer with no Rust backend, or a memo that cannot be
    written, just stays the transformers one."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(f"fast-tokenizer-v2|{version('transformers')}|{version('tokenizers')}".encode())
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(f"|{path.name}|".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    key = digest.hexdigest()
    memo = Path(memo_folder) / f"fast-{key}.json"
    saved = _read_memo(memo, key)
    if saved is not None:
        from tokenizers import Tokenizer

        return FastTokenizer(Tokenizer.from_str(saved["tokenizer"]), saved["pad_token_id"])
    tokenizer = load(folder)
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None:
        return tokenizer
    from .cache_entries import pack_json

    blob = pack_json(key, {"pad_token_id": tokenizer.pad_token_id, "tokenizer": backend.to_str()})
    from erasec.patches.atomic import write_file
    from erasec.patches.errors import PatchError

    try:
        write_file(memo, lambda stream: stream.write(blob))
    except PatchError:
        logger.debug("cannot write the tokenizer memo %s", memo)
    return tokenizer


def _read_memo(memo: Path, key: str) -> dict | None:
    """A tokenizer memo written by ``remembered_tokenizer``, or None when there is none intact: a
    damaged one (empty, truncated, a flipped bit: it carries a SHA-256, ``cache_entries``) is removed
    and the tokenizer is read again from its folder (issue 16 item 5)."""
    from .cache_entries import DamagedEntry, unpack_json

    try:
        blob = memo.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # a folder, unreadable
        blob = b""
    try:
        saved = unpack_json(blob, key)
        if not (isinstance(saved, dict) and isinstance(saved.get("tokenizer"), str) and type(saved.get("pad_token_id")) is int):
            raise DamagedEntry("not a tokenizer memo")
        return saved
    except (DamagedEntry, RecursionError) as error:
        logger.debug("tokenizer memo %s is damaged (%s); reading the tokenizer again", memo, error)
        with contextlib.suppress(OSError):
            shutil.rmtree(memo) if memo.is_dir() and not memo.is_symlink() else memo.unlink()
        return None
