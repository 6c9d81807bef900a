"""The offline CLIP tokenizer must give the real CLIP ids (research/perf-baseline.md §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from erasec.compiler.errors import ModelError
from erasec.compiler.models.tokenizer import load_clip_tokenizer, write_clip_tokenizer

ASTRONAUT = "a photo of an astronaut riding a horse on mars"
# Real CLIP ids of ASTRONAUT (the same from open_clip's SimpleTokenizer and SD1.5's tokenizer/).
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
SAMPLES = [ASTRONAUT, "Van Gogh, Starry Night!", "a  Photo of  Émile's café 🐱 17", "", " ", "word " * 90]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_clip_tokenizer(folder)
    return folder


def test_derived_files_have_clip_sizes(tokenizer_dir: Path) -> None:
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) == 1 + 48894


def test_write_is_deterministic(tokenizer_dir: Path, tmp_path: Path) -> None:
    write_clip_tokenizer(tmp_path)
    names = sorted(p.name for p in tokenizer_dir.iterdir())
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_real_clip_ids(tokenizer_dir: Path) -> None:
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    assert tokenizer(ASTRONAUT).input_ids == ASTRONAUT_IDS
    assert tokenizer("").input_ids == [49406, 49407]


def test_special_tokens_and_padding(tokenizer_dir: Path) -> None:
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<|startoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    assert tokenizer.pad_token_id == 49407
    padded = tokenizer(ASTRONAUT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    assert padded.input_ids == ASTRONAUT_IDS + [49407] * (77 - len(ASTRONAUT_IDS))
    long = tokenizer("word " * 90, truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_tokenizer_json_only_folder_matches(tokenizer_dir: Path, tmp_path: Path) -> None:
    # transformers 5's save_pretrained writes tokenizer.json (+ a config); a folder holding only
    # tokenizer.json must load with the same ids and the SD1 length.
    reference = load_clip_tokenizer(tokenizer_dir)
    saved = tmp_path / "saved"
    reference.save_pretrained(saved)
    only_json = tmp_path / "only-json"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_bytes((saved / "tokenizer.json").read_bytes())
    other = load_clip_tokenizer(only_json)
    assert other.model_max_length == 77
    assert other(SAMPLES, truncation=True, max_length=77).input_ids == reference(
        SAMPLES, truncation=True, max_length=77
    ).input_ids


def test_folder_without_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError) as caught:
        load_clip_tokenizer(tmp_path)
    assert str(caught.value) == f"{tmp_path}: no tokenizer files; expected vocab.json and merges.txt, or tokenizer.json"


@pytest.mark.parametrize("kind", ["clip", "open-clip", "bert"])
def test_fast_tokenizer_gives_transformers_ids(kind, tmp_path, minilm_sd1_path) -> None:
    """The memoised Rust tokenizer gives the transformers tokenizer's ids on every shipped suite
    prompt (and the pad id), so a warm rebuild that never imports transformers keys the same rows."""
    from erasec.compiler.models.bert import load_bert_tokenizer
    from erasec.compiler.eval.suites import SUITES, load_suite
    from erasec.compiler.models.tokenizer import OPEN_CLIP_PAD_TOKEN, FastTokenizer, remembered_tokenizer

    if kind == "bert":
        folder, load = minilm_sd1_path / "tokenizer", load_bert_tokenizer
    else:
        folder, load = tmp_path / "tokenizer", load_clip_tokenizer
        write_clip_tokenizer(folder, **({"pad_token": OPEN_CLIP_PAD_TOKEN} if kind == "open-clip" else {}))
    prompts = SAMPLES + ["word " * 200, "ÀÉÎõü ß ﬁ Ⅻ ①", "東京の夜景", "tab\there\nnew line", "<|endoftext|> inside"]
    prompts += [row.prompt for suite in SUITES for row in load_suite(suite)]
    prompts += [row.counterpart for suite in SUITES for row in load_suite(suite) if row.counterpart]
    memo = tmp_path / "memo"
    reference = remembered_tokenizer(folder, load, memo)  # loads through transformers, writes the memo
    fast = remembered_tokenizer(folder, load, memo)
    assert not isinstance(reference, FastTokenizer) and isinstance(fast, FastTokenizer)
    assert fast.pad_token_id == reference.pad_token_id
    expected = reference(prompts, truncation=True, max_length=77)["input_ids"]
    got = fast(prompts, truncation=True, max_length=77)["input_ids"]
    assert len(prompts) > 1500
    assert [list(ids) for ids in expected] == got
