"""The embedding cache: a rebuild after a spec edit encodes only the new prompts, and cold, warm and
``--no-cache`` builds write the same bytes; ``erasec cache info|clear``; ``erasec build-many``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from erasec.compiler.build import BuildOptions, build
from erasec.compiler.cli import cli

SPEC = """\
erasec: 1
name: cache-test
version: 1.0.0
model: builtin:tiny-sd1
method: {method}
erase:
{erase}
preserve: [Claude Monet, a photo of a cat]
"""


def _spec(folder, name, concepts, method="uce"):
    path = folder / f"{name}.yaml"
    erase = "\n".join(f"  - {{concept: {c}, anchor: art}}" for c in concepts)
    path.write_text(SPEC.format(method=method, erase=erase))
    return path


def test_rebuild_after_an_edit_encodes_only_the_new_prompts_and_writes_the_same_bytes(tmp_path, tiny_sd1_path):
    cache = tmp_path / "cache"
    first = build(_spec(tmp_path, "a", ["Van Gogh"]), tmp_path / "a.safetensors", BuildOptions(cache_dir=cache))
    assert first.prompts["cached"] == 0 and first.prompts["encoded"] > 0

    edited = _spec(tmp_path, "b", ["Van Gogh", "Kelly McKernan"])
    warm = build(edited, tmp_path / "warm.safetensors", BuildOptions(cache_dir=cache))
    assert warm.prompts["encoded"] == 1  # only "Kelly McKernan"; the anchor, preserved and "" are cached
    assert warm.prompts["cached"] == first.prompts["encoded"]

    cold = build(edited, tmp_path / "cold.safetensors", BuildOptions(cache_dir=tmp_path / "fresh"))
    uncached = build(edited, tmp_path / "none.safetensors", BuildOptions(cache=False))
    assert uncached.prompts["cached"] == 0
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "cold.safetensors").read_bytes()
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "none.safetensors").read_bytes()


def test_the_site_gram_and_base_pin_are_memoised_under_the_weights_file_stamp(tmp_path, tiny_sd1_path, monkeypatch):
    import os
    import shutil

    from erasec.compiler.models.sd import SDModel

    model = tmp_path / "model"
    shutil.copytree(tiny_sd1_path, model)
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    options = BuildOptions(cache_dir=tmp_path / "cache", model=str(model))
    build(spec, tmp_path / "first.safetensors", options)
    assert len(list((tmp_path / "cache" / "embeddings" / "grams").glob("*/*.entry"))) == 1

    computed, pinned = [], []
    original_gram, original_pin = SDModel.site_gram, SDModel.base_pin
    monkeypatch.setattr(SDModel, "site_gram", lambda self, *a: computed.append(1) or original_gram(self, *a))
    monkeypatch.setattr(SDModel, "base_pin", lambda self, *a: pinned.append(1) or original_pin(self, *a))
    build(spec, tmp_path / "again.safetensors", options)
    assert computed == [] and pinned == []  # both read back from their memos
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()

    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(unet, ns=(unet.stat().st_atime_ns, unet.stat().st_mtime_ns + 10**9))  # a new file, as far as we know
    build(spec, tmp_path / "touched.safetensors", options)
    assert computed == [1] and pinned == [1]


def test_padded_rows_are_cached_apart_from_unpadded(tmp_path, tiny_sd1_path):
    cache = tmp_path / "cache"
    build(_spec(tmp_path, "a", ["Van Gogh"]), tmp_path / "a.safetensors", BuildOptions(cache_dir=cache))
    legacy = build(
        _spec(tmp_path, "b", ["Van Gogh"], method="uce-legacy"), tmp_path / "b.safetensors", BuildOptions(cache_dir=cache)
    )
    assert legacy.prompts["encoded"] > 0  # 77-row encodings are other entries


def test_cache_info_and_clear(tmp_path, tiny_sd1_path, monkeypatch):
    monkeypatch.setenv("ERASEC_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    assert runner.invoke(cli, ["build", str(spec), "-o", str(tmp_path / "a.safetensors")]).exit_code == 0
    info = json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)
    assert info["entries"] > 0 and info["bytes"] > 0
    cleared = json.loads(runner.invoke(cli, ["cache", "clear", "--json"]).output)
    assert cleared["entries"] == info["entries"]
    assert json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)["entries"] == 0
    result = runner.invoke(cli, ["build", str(spec), "-o", str(tmp_path / "b.safetensors"), "--no-cache"])
    assert result.exit_code == 0
    assert json.loads(runner.invoke(cli, ["cache", "info", "--json"]).output)["entries"] == 0


def test_build_many_builds_each_spec_and_reports_a_failure(tmp_path, tiny_sd1_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    _spec(specs, "one", ["Van Gogh"])
    _spec(specs, "two", ["Kelly McKernan"])
    (specs / "broken.yaml").write_text("erasec: 1\nname: broken\n")
    result = CliRunner().invoke(cli, ["build-many", str(specs), "-o", str(tmp_path / "out"), "-j", "2", "--json"])
    assert result.exit_code == 2
    data = json.loads(result.output)
    by_spec = {r["spec"].rsplit("/", 1)[-1]: r for r in data["results"]}
    assert by_spec["broken.yaml"]["ok"] is False and "version" in by_spec["broken.yaml"]["error"]
    assert by_spec["one.yaml"]["ok"] and by_spec["two.yaml"]["ok"]
    alone = build(specs / "one.yaml", tmp_path / "alone.safetensors")
    assert (tmp_path / "out" / "one.safetensors").read_bytes() == (tmp_path / "alone.safetensors").read_bytes()
    assert data["failed"] == 1


def test_version_and_a_spec_error_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("erasec: 1\nname: bad\n")
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom erasec.compiler.cli import cli\n"
        f"assert CliRunner().invoke(cli, ['--version']).exit_code == 0\n"
        f"assert CliRunner().invoke(cli, ['build', {str(bad)!r}, '-o', {str(tmp_path / 'x.safetensors')!r}]).exit_code == 2\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_warm_rebuild_imports_neither_transformers_nor_diffusers(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setenv("ERASEC_CACHE_DIR", str(tmp_path / "cache"))  # the built-in model lands there too
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    build(spec, tmp_path / "cold.safetensors", BuildOptions())
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom erasec.compiler.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['build', {str(spec)!r}, '-o', {str(tmp_path / 'warm.safetensors')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('transformers', 'diffusers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "warm.safetensors").read_bytes() == (tmp_path / "cold.safetensors").read_bytes()


@pytest.mark.slow  # starts a Ray cluster: about a minute on 2 cores
def test_build_many_on_a_local_ray_cluster(tmp_path, tiny_sd1_path):
    pytest.importorskip("ray")
    specs = tmp_path / "specs"
    specs.mkdir()
    _spec(specs, "one", ["Van Gogh"])
    result = CliRunner().invoke(cli, ["build-many", str(specs), "-o", str(tmp_path / "out"), "--ray", "local", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "one.safetensors").is_file()


# --- issue 16: damaged entries are misses, keys cover the encoder's files, a cache that cannot be
# written costs a warning (items 5, 10, 11) ---------------------------------------------------------


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory, tiny_sd1_path):
    """A tiny-sd1 build into an empty cache: (spec, cache folder, the patch's bytes)."""
    folder = tmp_path_factory.mktemp("clean")
    spec = _spec(folder, "clean", ["Van Gogh", "Kelly McKernan"])
    cache = folder / "cache"
    build(spec, folder / "clean.safetensors", BuildOptions(cache_dir=cache))
    return spec, cache, (folder / "clean.safetensors").read_bytes()


def _entries(cache, kinds=("rows", "grams", "pins")):
    return sorted(p for kind in kinds for p in (cache / "embeddings" / kind).glob("**/*") if p.is_file())


def _zero(path):
    path.write_bytes(b"")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path):  # a bit of the last value (a row's, or the JSON's closing brace)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _folder(path):
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"\0")


def _wrong_shape(path):
    """A well-formed entry with a valid checksum, for the right key, holding one row too many."""
    import numpy as np

    from erasec.compiler.models.cache_entries import pack_array, unpack_array

    if path.suffix != ".entry":
        return _zero(path)
    key, kind = path.stem, path.parent.parent.name
    array = unpack_array(path.read_bytes(), key, kind)
    path.write_bytes(pack_array(key, kind, np.vstack([array, array[-1:]])))


def _wrong_dtype(path):
    if path.suffix != ".entry":
        return _zero(path)
    path.write_bytes(path.read_bytes().replace(b'"dtype": "<f4"', b'"dtype": "<f2"', 1))


@pytest.mark.parametrize("damage", [_zero, _truncate, _flip_last_byte, _folder, _wrong_shape, _wrong_dtype])
def test_a_damaged_entry_is_a_miss_that_is_removed_and_encoded_again(tmp_path, clean_build, damage):
    """A zero-byte entry (what a power loss before fsync leaves) used to abort every later build with
    EOFError; any damaged entry, memo or Gram is now encoded again, and the patch is the clean one."""
    import shutil

    from erasec.compiler.models.cache_entries import unpack_array

    spec, clean_cache, clean = clean_build
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    damaged = _entries(cache)
    assert len(damaged) > 4
    for path in damaged:
        damage(path)
    result = build(spec, tmp_path / "again.safetensors", BuildOptions(cache_dir=cache))
    assert result.prompts["cached"] == 0 and result.prompts["encoded"] > 0
    assert (tmp_path / "again.safetensors").read_bytes() == clean
    rows = _entries(cache, ("rows",))
    assert all(path.is_file() for path in rows) and len(rows) == len(_entries(clean_cache, ("rows",)))
    for path in rows:  # stored again, whole
        unpack_array(path.read_bytes(), path.stem, "rows")
    warm = build(spec, tmp_path / "warm.safetensors", BuildOptions(cache_dir=cache))
    assert warm.prompts["encoded"] == 0 and (tmp_path / "warm.safetensors").read_bytes() == clean


def _row_entries(cache):
    return _entries(cache, ("rows",))


def test_one_flipped_exponent_bit_is_a_miss(tmp_path, clean_build):
    """Issue 16 item 10: one exponent bit flipped per row gave a patch 25 % off that still verified."""
    import shutil

    import numpy as np

    from erasec.compiler.models.cache_entries import MAGIC

    spec, clean_cache, clean = clean_build
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    entry = _row_entries(cache)[0]
    data = bytearray(entry.read_bytes())
    start = data.index(b"\n", len(MAGIC)) + 1
    values = np.frombuffer(bytes(data[start:]), dtype="<f4").copy()
    values.view("<u4")[0] ^= 1 << 23  # the lowest exponent bit of the first value: it doubles or halves
    data[start:] = values.tobytes()
    entry.write_bytes(bytes(data))
    result = build(spec, tmp_path / "again.safetensors", BuildOptions(cache_dir=cache))
    assert result.prompts["encoded"] == 1
    assert (tmp_path / "again.safetensors").read_bytes() == clean


def test_swapped_entries_are_misses(tmp_path, clean_build):
    """Two entries swapped (their files renamed into each other's names) were read as each other's
    rows (a patch 190 % off); each entry names its key, so both are encoded again."""
    import shutil

    spec, clean_cache, clean = clean_build
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    from erasec.compiler.models.cache_entries import unpack_array

    shapes = {}  # entries of one shape: the swap is then caught by the key each entry names
    for path in _row_entries(cache):
        shapes.setdefault(unpack_array(path.read_bytes(), path.stem, "rows").shape, []).append(path)
    first, second = next(paths for paths in shapes.values() if len(paths) >= 2)[:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    result = build(spec, tmp_path / "again.safetensors", BuildOptions(cache_dir=cache))
    assert result.prompts["encoded"] == 2
    assert (tmp_path / "again.safetensors").read_bytes() == clean


@pytest.mark.parametrize(
    "edit",
    [
        ("text_encoder/config.json", lambda config: {**config, "layer_norm_eps": 0.1}),
        ("tokenizer/special_tokens_map.json", lambda tokens: {**tokens, "pad_token": "!"}),
    ],
    ids=["layer_norm_eps", "pad-token"],
)
def test_the_key_covers_the_encoders_config_and_tokenizer_files(tmp_path, tiny_sd1_path, edit):
    """A changed ``layer_norm_eps`` reused the old rows (a patch 8.4× off): the encoder's and the
    tokenizer's files are part of the key, so the edited model misses and gets its own rows."""
    import shutil

    name, change = edit
    model = tmp_path / "model"
    shutil.copytree(tiny_sd1_path, model)
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    cache = tmp_path / "cache"
    build(spec, tmp_path / "before.safetensors", BuildOptions(cache_dir=cache, model=str(model)))
    path = model / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    after = build(spec, tmp_path / "after.safetensors", BuildOptions(cache_dir=cache, model=str(model)))
    assert after.prompts["cached"] == 0
    build(spec, tmp_path / "uncached.safetensors", BuildOptions(cache=False, model=str(model)))
    assert (tmp_path / "after.safetensors").read_bytes() == (tmp_path / "uncached.safetensors").read_bytes()
    if name.endswith("config.json"):  # the rows really change: reusing them would have been wrong
        assert (tmp_path / "after.safetensors").read_bytes() != (tmp_path / "before.safetensors").read_bytes()


def _unwritable(monkeypatch, cache, how):
    """Writes under ``cache`` fail as on a read-only (EROFS) or full (ENOSPC) file system. Tests run as
    root here, and chmod 0500 does not stop root, so the failure is injected into the one writer
    (``patches.atomic``): the temporary file cannot be made, or every byte written to it fails."""
    import errno
    import os
    import tempfile

    from erasec.patches import atomic

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is None or not str(dir).startswith(str(cache)):
            return real(*args, dir=dir, **kwargs)
        if how == "read-only":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        handle, name = real(*args, dir=dir, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, handle)  # writes to /dev/full fail with ENOSPC
        os.close(full)
        return handle, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_a_cache_that_cannot_be_written_costs_one_warning_not_the_build(tmp_path, clean_build, monkeypatch, caplog, how):
    import os
    import shutil

    spec, clean_cache, clean = clean_build
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    for path in _row_entries(cache)[:2]:  # two misses, so the build tries to store
        path.unlink()
    os.chmod(cache, 0o500)  # stops a non-root user; for root, the writer fails as a read-only disk would
    _unwritable(monkeypatch, cache, how)
    try:
        with caplog.at_level("WARNING", logger="erasec"):
            result = build(spec, tmp_path / "out.safetensors", BuildOptions(cache_dir=cache))
    finally:
        os.chmod(cache, 0o700)
    assert result.prompts["encoded"] == 2
    assert (tmp_path / "out.safetensors").read_bytes() == clean
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot write the embedding cache" in warnings[0], warnings
    assert len(_row_entries(cache)) == len(_row_entries(clean_cache)) - 2
    assert not [p for p in cache.glob("**/.*.tmp")]  # no temporary left behind


def test_a_damaged_tokenizer_memo_is_read_again(tmp_path, tiny_sd1_path, monkeypatch):
    """The memoised tokenizer carries a checksum too: a damaged memo is removed and rebuilt, not trusted."""
    monkeypatch.setenv("ERASEC_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(tmp_path, "a", ["Van Gogh"])
    options = BuildOptions(model=str(tiny_sd1_path), cache=False)
    build(spec, tmp_path / "first.safetensors", options)
    (memo,) = (tmp_path / "cache" / "tokenizers").glob("fast-*.json")
    for damage in (_zero, _flip_last_byte, _truncate):
        damage(memo)
        build(spec, tmp_path / "again.safetensors", options)
        assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()
        from erasec.compiler.models.tokenizer import _read_memo

        assert _read_memo(memo, memo.stem.removeprefix("fast-")) is not None  # written again, whole
