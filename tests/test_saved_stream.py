"""The one-pass reader of saved archives (what docker: streams from a daemon), fed through a pipe-like,
non-seekable stream in uneven chunks: it must see the same image as the random-access docker-archive and
OCI readers, for skopeo's legacy layout and Docker >= 25's OCI hybrid, and refuse hostile archives in one
line."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from imgscan.errors import ImgscanError
from imgscan.layers.index import Limits
from imgscan.layers.scan import scan_image
from imgscan.sources import saved_stream
from imgscan.sources.image import Image
from imgscan.sources.oci import format_platform
from imgscan.sources.refs import open_image
from imgscan.sources.saved_stream import read_saved_stream
from imgscan.views import entry_data, list_entries
from tests import craft, imagebuild
from tests.craft import Member, file, symlink, tar_bytes


class Trickle(io.RawIOBase):
    """A file read in random chunk sizes, not seekable: what a daemon's HTTP stream looks like."""

    def __init__(self, data: io.BufferedIOBase) -> None:
        self._data = data
        self._rng = random.Random(3)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        chunk = self._data.read(min(len(buf), self._rng.randint(1, 70_000)))
        buf[: len(chunk)] = chunk
        return len(chunk)


def streamed(archive: Path, limits: Limits | None = None) -> Image:
    with open(archive, "rb") as f:
        saved, layers = read_saved_stream(Trickle(f), None, str(archive), limits or Limits())  # type: ignore[arg-type]
    return Image("stream", "docker", saved.image_id, format_platform(saved.config), saved.config, layers)


def listing(image: Image) -> list[dict[str, Any]]:
    merged = scan_image(image, Limits())
    return [entry_data(path, entry) for path, entry in list_entries(merged.fs, "/", True)]


def test_skopeo_legacy_archive_equals_random_access_read(mini_images: imagebuild.ImageSet) -> None:
    by_file = open_image(f"docker-archive:{mini_images.docker_archive}")
    by_stream = streamed(mini_images.docker_archive)
    assert by_stream.digest == by_file.digest
    assert [r.diff_id for r in by_stream.layers] == [r.diff_id for r in by_file.layers]
    assert listing(by_stream) == listing(by_file)


def hybrid_archive(layout: Path, tag: str, dest: Path) -> Path:
    """Docker >= 25's save layout from an OCI layout with plain-tar layers: blobs/sha256/* (layers,
    config, manifest), index.json, oci-layout and a manifest.json naming blobs."""
    index = json.loads((layout / "index.json").read_text())
    [desc] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    blob = "blobs/sha256/{}".format
    entry = {
        "Config": blob(manifest["config"]["digest"][7:]),
        "RepoTags": ["imgscan/hybrid:1"],
        "Layers": [blob(layer["digest"][7:]) for layer in manifest["layers"]],
    }
    members = [
        file(f"blobs/sha256/{p.name}", p.read_bytes()) for p in sorted((layout / "blobs/sha256").iterdir())
    ]
    members += [
        file("index.json", (layout / "index.json").read_bytes()),
        file("manifest.json", json.dumps([entry])),
        file("oci-layout", (layout / "oci-layout").read_bytes()),
    ]
    dest.write_bytes(tar_bytes(members))
    return dest


@pytest.mark.parametrize("layers", ["plain", "gzip"])
def test_docker_25_hybrid_archive_equals_oci_layout(
    mini_images: imagebuild.ImageSet, tmp_path: Path, layers: str
) -> None:
    """Docker >= 25 saves plain tars from the classic store and the registry's gzip blobs from the
    containerd store: both are read, with each blob checked against the digest its name claims."""
    layout = mini_images.plain.path if layers == "plain" else mini_images.umoci.path
    archive = hybrid_archive(layout, imagebuild.FINAL_TAG, tmp_path / "hybrid.tar")
    by_stream = streamed(archive)
    by_layout = open_image(f"oci-dir:{layout}:{imagebuild.FINAL_TAG}")
    assert [r.digest for r in by_stream.layers] == [r.digest for r in by_layout.layers]
    assert listing(by_stream) == listing(by_layout)
    assert listing(open_image(f"docker-archive:{archive}")) == listing(by_layout)


# ---------------------------------------------------------------------------------------- hostile input

LAYER = tar_bytes([file("etc/hostname", "x\n"), file("bin/tool", b"\x7fELF" + b"\0" * 70_000)])


def saved(tmp_path: Path, members: list[Member], diff_ids: list[str], layers: list[str]) -> Path:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = [{"Config": "config.json", "RepoTags": ["x/y:z"], "Layers": layers}]
    archive = tmp_path / "saved.tar"
    members = [*members, file("config.json", json.dumps(config)), file("manifest.json", json.dumps(manifest))]
    archive.write_bytes(tar_bytes(members))
    return archive


def refused(archive: Path, *words: str, limits: Limits | None = None) -> None:
    with pytest.raises(ImgscanError) as caught:
        streamed(archive, limits)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_the_same_member_named_twice_gives_two_layers(tmp_path: Path) -> None:
    """docker links identical layers to one layer.tar: each position gets its own index."""
    members = [Member("a/layer.tar", data=LAYER), symlink("b/layer.tar", "../a/layer.tar")]
    image = streamed(saved(tmp_path, members, [craft.sha256(LAYER)] * 2, ["a/layer.tar", "b/layer.tar"]))
    entries = {e["path"]: e for e in listing(image)}
    assert entries["/etc/hostname"]["layer"] == 1
    assert [ref.indexed is None for ref in image.layers] == [True, True]  # the scan took them


def test_blob_not_matching_its_name(tmp_path: Path) -> None:
    name = f"blobs/sha256/{'0' * 64}"
    archive = saved(tmp_path, [Member(name, data=LAYER)], [craft.sha256(LAYER)], [name])
    refused(archive, "layer 0", "blob digest mismatch")


def test_diff_id_mismatch(tmp_path: Path) -> None:
    archive = saved(tmp_path, [Member("l.tar", data=LAYER)], [craft.sha256(b"other")], ["l.tar"])
    refused(archive, "layer 0", "diff_id mismatch")


def test_missing_layer(tmp_path: Path) -> None:
    refused(saved(tmp_path, [], [craft.sha256(LAYER)], ["l.tar"]), "layer 0 (l.tar) is missing")


def test_layer_that_is_not_a_tar(tmp_path: Path) -> None:
    junk = random.Random(1).randbytes(200_000)
    refused(
        saved(tmp_path, [Member("l.tar", data=junk)], [craft.sha256(junk)], ["l.tar"]), "layer 0", "l.tar"
    )


def test_layer_path_escaping_the_archive(tmp_path: Path) -> None:
    refused(
        saved(tmp_path, [Member("l.tar", data=LAYER)], [craft.sha256(LAYER)], ["../../etc/passwd"]), "missing"
    )


def test_config_too_large_for_metadata(tmp_path: Path) -> None:
    huge = b'{"pad": "' + b"x" * (saved_stream.MAX_JSON_BYTES + 10) + b'"}'
    archive = tmp_path / "saved.tar"
    manifest = [{"Config": "config.json", "Layers": []}]
    archive.write_bytes(tar_bytes([file("config.json", huge), file("manifest.json", json.dumps(manifest))]))
    refused(archive, "config.json is too large for a metadata file")


def test_metadata_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saved_stream, "MAX_KEPT_BYTES", 50_000)
    members = [file(f"{i}/json", "{}" + " " * 20_000) for i in range(5)]
    refused(saved(tmp_path, members, [], []), "bytes of metadata members")


def test_member_count_limit(tmp_path: Path) -> None:
    members = [file(f"f{i}", "1.0") for i in range(50)]
    refused(saved(tmp_path, members, [], []), "more than 20 archive members", limits=Limits(max_entries=20))
