"""``erasec publish PATCH --to DIR``: a hub-ready folder holding every published version of a patch.

Layout (research/ecosystem.md §5.1–§5.2): ``<name>-<version>.safetensors`` per version — a
kohya-format file, so loaders need ``weight_name=`` — plus ``manifest.json`` (every version: file,
full-file sha256 = the Hub's LFS oid, tensor-bytes sha256 = ``sshs_model_hash``, base pin,
concepts) and ``README.md``, a model card whose YAML front matter (``base_model``,
``base_model_relation: adapter``, ``license``, ``tags``) is written with huggingface_hub's offline
``ModelCardData``/``ModelCard``; nothing is uploaded. A published version is immutable: the same
bytes again are a no-op, different bytes under the same version are refused.

The card and manifest name the erased concepts only when the publisher asks (``list_concepts``,
``--list-concepts``), and publish then returns the names it wrote so the CLI shows them: a spec's
``file:`` lists come expanded into the patch, and the patch does not record which concepts came
from a file, so a list read from the wrong file (issue 16: ``/proc/self/environ``) must not reach a
public page unseen. By default the card gives the counts and says how to list them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .diff import semver_core
from .errors import PatchError
from .read import PatchFile
from .atomic import write_files_atomically

MANIFEST = "manifest.json"
CARD = "README.md"
DEFAULT_LICENSE = "creativeml-openrail-m"  # the SD1/SD2 weights' license; pass another for other bases
TAGS = ("text-to-image", "stable-diffusion", "lora", "diffusers", "concept-erasure", "erasec")


def versioned_file_name(patch: PatchFile) -> str:
    return f"{patch.name}-{patch.version}.safetensors"


def _entry(patch: PatchFile, file_name: str, file_sha256: str, list_concepts: bool) -> dict:
    spec, base = patch.spec, patch.base
    concepts = [str(entry.get("concept")) for entry in spec.get("erase", []) if isinstance(entry, dict)]
    return {
        "file": file_name,
        "sha256": file_sha256,
        "sshs_model_hash": patch.data_sha256,
        "size_bytes": patch.size,
        "compiler": patch.metadata.get("erasec.compiler"),
        "method": spec.get("method"),
        **({"erase": concepts} if list_concepts else {}),
        "erase_count": len(concepts),
        "preserve_count": len(spec.get("preserve", [])),
        "rank": patch.rank,
        "dtype": patch.dtype,
        "base": {key: base.get(key) for key in ("family", "model", "tensors", "dtype", "sha256", "sha256_fp16")},
    }


def _erases(entry: dict) -> str:
    """What a version erases, for the versions table: the names if they were listed, else the count."""
    if "erase" in entry:
        return ", ".join(entry["erase"])
    return f"{entry['erase_count']} concepts (not listed)"


def _latest(versions: dict) -> str:
    return max(versions, key=lambda v: (semver_core(v) or (0, 0, 0), "-" not in v, v))


def _card(name: str, manifest: dict, base_model: str | None, license_id: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    latest = manifest["latest"]
    entry = manifest["versions"][latest]
    data = ModelCardData(
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        library_name="diffusers",
        license=license_id,
        tags=list(TAGS),
    )
    if "erase" in entry:
        erased = "\n".join(f"- {concept}" for concept in entry["erase"])
    else:
        erased = (
            f"{entry['erase_count']} concepts, not listed on this card; `erasec inspect {entry['file']}` lists them "
            "(the publisher can list them here with `erasec publish --list-concepts`)."
        )
    rows = "\n".join(
        f"| {version} | `{manifest['versions'][version]['file']}` | {_erases(manifest['versions'][version])} "
        f"| `{manifest['versions'][version]['sshs_model_hash'][:12]}` |"
        for version in sorted(manifest["versions"], key=lambda v: semver_core(v) or (0, 0, 0), reverse=True)
    )
    base = entry["base"]
    body = f"""
# {name} {latest}

A concept-erasure patch compiled by [erasec](https://pypi.org/project/erasec/) (closed-form; no
training): a kohya-format LoRA that loads unchanged in diffusers, ComfyUI, A1111/Forge and kohya.

## Erases

{erased}

It keeps {entry['preserve_count']} listed prompts; method `{entry['method']}`, rank {entry['rank']}, {entry['dtype']}.

## Use

```python
pipe.load_lora_weights("<this repo or folder>", weight_name="{entry['file']}")
```

Check that a model is the base this patch was built for, and merge it:

```
erasec verify {entry['file']} --model MODEL
erasec apply {entry['file']} --model MODEL -o MERGED
```

## Base

`{base['model']}` ({base['family']}); the patch pins the {base['tensors']} tensors it touches:
sha256 `{base['sha256']}`, fp16-rounded `{base['sha256_fp16']}`.

## Versions

| version | file | erases | sha256 of tensors |
|---|---|---|---|
{rows}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def publish(
    patch: PatchFile,
    folder: Path,
    *,
    base_model: str | None = None,
    license_id: str | None = None,
    list_concepts: bool = False,
) -> dict:
    """Add ``patch`` to the hub folder ``folder``; returns what was written, with the concept names
    when ``list_concepts`` wrote them into the card and manifest."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PatchError(f"{folder}: is a file; give a folder to publish into")
    manifest_path = folder / MANIFEST
    manifest = {"name": patch.name, "latest": patch.version, "versions": {}}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest.get("name"), str) or not isinstance(manifest["versions"], dict):
                raise TypeError  # a manifest without a name would print None below
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise PatchError(f"{manifest_path}: not an erasec hub manifest; publish into another folder") from None
        if manifest.get("name") != patch.name:
            raise PatchError(
                f"{folder}: holds the patch {manifest.get('name')!r}, not {patch.name!r}; publish into another folder"
            )
    file_name = versioned_file_name(patch)
    raw = patch.path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    target = folder / file_name
    status = "published"
    if target.exists():
        if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
            raise PatchError(
                f"{target}: version {patch.version} is already published with different bytes; "
                "bump the version in the spec and rebuild"
            )
        status = "unchanged"
    known = manifest["versions"].get(patch.version)
    if known is not None and known.get("sha256") != digest:
        raise PatchError(
            f"{manifest_path}: version {patch.version} is recorded with different bytes; bump the version and rebuild"
        )
    entry = _entry(patch, file_name, digest, list_concepts)
    manifest["versions"][patch.version] = entry
    manifest["versions"] = dict(sorted(manifest["versions"].items()))
    manifest["latest"] = _latest(manifest["versions"])
    # a card option given once holds for later versions until given again
    base_model = base_model or manifest.get("base_model")
    license_id = license_id or manifest.get("license") or DEFAULT_LICENSE
    manifest.update(base_model=base_model, license=license_id)
    card = _card(patch.name, manifest, base_model, license_id)
    files = {manifest_path: (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()}
    files[folder / CARD] = card.encode("utf-8")
    if status == "published":
        files[target] = raw

    def write(staging: Path) -> None:
        for path, data in files.items():
            (staging / path.name).write_bytes(data)

    write_files_atomically(list(files), write)  # all or nothing: never a card without its file
    return {
        "status": status,
        "folder": str(folder),
        "file": file_name,
        "sha256": digest,
        "latest": manifest["latest"],
        "versions": list(manifest["versions"]),
        "base_model": base_model,
        "license": license_id,
        "erase_count": entry["erase_count"],
        **({"listed_concepts": entry["erase"]} if list_concepts else {}),
    }
