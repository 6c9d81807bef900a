"""``erasec publish``: a hub folder with versioned files, manifest.json and a model card."""

import json

import pytest
from fake_patches import write_fake_patch
from huggingface_hub import ModelCard

from erasec.patches.errors import PatchError
from erasec.patches.publish import publish
from erasec.patches.read import read_patch


def test_publish_writes_card_manifest_and_versioned_file(tmp_path):
    patch = read_patch(write_fake_patch(tmp_path / "p.safetensors"))
    hub = tmp_path / "hub"
    result = publish(patch, hub, base_model="org/base", list_concepts=True)
    assert result["status"] == "published" and result["file"] == "no-artists-1.0.0.safetensors"
    assert result["listed_concepts"] == ["Van Gogh"]
    assert (hub / "no-artists-1.0.0.safetensors").read_bytes() == patch.path.read_bytes()
    card = ModelCard.load(hub / "README.md")  # offline: a local path
    data = card.data.to_dict()
    assert data["base_model"] == "org/base" and data["base_model_relation"] == "adapter"
    assert data["license"] == "creativeml-openrail-m"
    assert {"lora", "stable-diffusion", "concept-erasure"} <= set(data["tags"])
    assert "- Van Gogh" in card.text and 'weight_name="no-artists-1.0.0.safetensors"' in card.text
    manifest = json.loads((hub / "manifest.json").read_text())
    entry = manifest["versions"]["1.0.0"]
    assert manifest["latest"] == "1.0.0" and entry["sshs_model_hash"] == patch.data_sha256
    assert entry["base"]["sha256"] == patch.base["sha256"]


def test_versions_accumulate_and_the_card_follows_the_latest(tmp_path):
    hub = tmp_path / "hub"
    publish(
        read_patch(write_fake_patch(tmp_path / "a.safetensors", concepts=("A", "B"), version="1.1.0")), hub,
        base_model="org/base", list_concepts=True,
    )
    publish(read_patch(write_fake_patch(tmp_path / "b.safetensors", concepts=("A",), version="1.0.0")), hub)
    manifest = json.loads((hub / "manifest.json").read_text())
    assert list(manifest["versions"]) == ["1.0.0", "1.1.0"] and manifest["latest"] == "1.1.0"
    card = ModelCard.load(hub / "README.md")
    assert card.data.base_model == "org/base"  # kept from the first publish
    assert "# no-artists 1.1.0" in card.text and "| 1.0.0 |" in card.text


def test_republishing_the_same_bytes_is_a_no_op_and_different_bytes_are_refused(tmp_path):
    hub = tmp_path / "hub"
    first = read_patch(write_fake_patch(tmp_path / "a.safetensors"))
    publish(first, hub)
    assert publish(first, hub)["status"] == "unchanged"
    other = read_patch(write_fake_patch(tmp_path / "b.safetensors", seed=5))
    with pytest.raises(PatchError, match="version 1.0.0 is already published with different bytes; bump the version"):
        publish(other, hub)
    assert (hub / "no-artists-1.0.0.safetensors").read_bytes() == first.path.read_bytes()


def test_a_folder_of_another_patch_is_refused(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "manifest.json").write_text(json.dumps({"name": "other", "latest": "1.0.0", "versions": {}}))
    with pytest.raises(PatchError, match="holds the patch 'other', not 'no-artists'"):
        publish(read_patch(write_fake_patch(tmp_path / "a.safetensors")), hub)



def test_concepts_reach_the_card_and_manifest_only_when_asked(tmp_path):
    """A spec's file: lists come expanded into the patch; a list read from the wrong file (the host's
    environment) must not reach a public card unseen (issue 16 item 4): by default only counts."""
    secret = "AWS_SECRET_ACCESS_KEY=abc123"
    patch = read_patch(write_fake_patch(tmp_path / "p.safetensors", concepts=("Van Gogh", secret)))
    hub = tmp_path / "hub"
    result = publish(patch, hub)
    assert result["erase_count"] == 2 and "listed_concepts" not in result
    card, manifest = (hub / "README.md").read_text(), (hub / "manifest.json").read_text()
    for text in (card, manifest):
        assert secret not in text and "Van Gogh" not in text
    assert "2 concepts, not listed on this card; `erasec inspect no-artists-1.0.0.safetensors` lists them" in card
    assert "| 1.0.0 | `no-artists-1.0.0.safetensors` | 2 concepts (not listed) |" in card
    assert json.loads(manifest)["versions"]["1.0.0"]["erase_count"] == 2

    listed = publish(patch, tmp_path / "hub2", list_concepts=True)
    assert listed["listed_concepts"] == ["Van Gogh", secret]  # what the CLI prints
    assert f"- {secret}" in (tmp_path / "hub2" / "README.md").read_text()


@pytest.mark.parametrize("foreign", ['{"versions": {}}', '{"name": null, "versions": {}}', '[1]', '{"name": "x", "versions": 3}'])
def test_a_foreign_manifest_is_refused_without_printing_none(tmp_path, foreign):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "manifest.json").write_text(foreign)
    with pytest.raises(PatchError) as info:
        publish(read_patch(write_fake_patch(tmp_path / "a.safetensors")), hub)
    assert str(info.value) == f"{hub / 'manifest.json'}: not an erasec hub manifest; publish into another folder"
