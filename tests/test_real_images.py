"""Read real images (umoci, skopeo, buildah, debootstrap) through every reference form; compare whole trees.

The oracle is `umoci unpack` run as root (tests/imagebuild.py): every path, type, permission bits, symlink
target and file size of the merged view must match it, whiteouts and opaque directories included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests import imagebuild
from tests.imagebuild import DOCKER_REPO_TAG, FINAL_TAG, UMOCI_TAGS, ImageSet, Layout
from tests.treecompare import host_tree, imgscan_entries, imgscan_tree, tree_differences

IMAGE_SETS = ["mini", pytest.param("deb", marks=pytest.mark.slow)]


def imgscan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *args], capture_output=True, text=True, check=False, timeout=600
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one stderr line 'imgscan: error: ...'; returns that line."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("imgscan: error: "), proc.stderr
    return lines[0]


@dataclass(frozen=True)
class Form:
    """A way to name an image: how to build the reference, and which layout holds the expected tree."""

    id: str
    ref: Callable[[ImageSet], str]
    expected: Callable[[ImageSet], dict[str, tuple]]


def _umoci(s: ImageSet) -> dict[str, tuple]:
    return s.umoci.expected_tree(FINAL_TAG)


def _buildah(s: ImageSet) -> dict[str, tuple]:
    assert s.buildah is not None
    return s.buildah.expected_tree()


FORMS = [
    Form("oci-dir-tag", lambda s: f"oci-dir:{s.umoci.path}:{FINAL_TAG}", _umoci),
    Form("oci-dir-digest", lambda s: f"oci-dir:{s.umoci.path}@{s.umoci.manifest_digest(FINAL_TAG)}", _umoci),
    Form("oci-dir-zstd", lambda s: f"oci-dir:{s.zstd.path}", _umoci),
    Form("oci-dir-zstd-tag", lambda s: f"oci-dir:{s.zstd.path}:{FINAL_TAG}", _umoci),
    Form("oci-dir-uncompressed", lambda s: f"oci-dir:{s.plain.path}", _umoci),
    Form("bare-oci-dir", lambda s: str(s.zstd.path), _umoci),
    Form("oci-archive", lambda s: f"oci-archive:{s.oci_archive}", _umoci),
    Form("oci-archive-tag", lambda s: f"oci-archive:{s.oci_archive}:{FINAL_TAG}", _umoci),
    Form("bare-oci-archive", lambda s: str(s.oci_archive), _umoci),
    Form("docker-archive", lambda s: f"docker-archive:{s.docker_archive}", _umoci),
    Form("docker-archive-tag", lambda s: f"docker-archive:{s.docker_archive}:{DOCKER_REPO_TAG}", _umoci),
    Form("bare-docker-archive", lambda s: str(s.docker_archive), _umoci),
    Form("dir", lambda s: f"dir:{s.rootfs_dir}", _umoci),
    Form("bare-dir", lambda s: str(s.rootfs_dir), _umoci),
    Form("buildah-oci-dir", lambda s: f"oci-dir:{s.buildah.path}:{imagebuild.BUILDAH_TAG}", _buildah),
    Form("buildah-bare-oci-dir", lambda s: str(s.buildah.path), _buildah),
    Form("buildah-docker-archive", lambda s: f"docker-archive:{s.buildah_docker_archive}", _buildah),
]


@pytest.mark.parametrize("image_set", IMAGE_SETS, indirect=True)
@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
def test_whole_tree_matches_umoci_unpack(image_set: ImageSet, form: Form) -> None:
    ref = form.ref(image_set)
    assert tree_differences(form.expected(image_set), imgscan_tree(ref)) == []


@pytest.mark.parametrize("image_set", IMAGE_SETS, indirect=True)
@pytest.mark.parametrize("tag", UMOCI_TAGS)
def test_every_tag_by_tag_and_by_digest(image_set: ImageSet, tag: str) -> None:
    """Each tag of the layered image: base, whiteouts (v2), re-adds (v3), opaque dir (v4)."""
    if image_set.name == "deb" and tag not in ("base", FINAL_TAG):
        pytest.skip("the mini image covers the middle tags; each umoci unpack of deb costs ~15 s")
    layout = image_set.umoci
    expected = layout.expected_tree(tag)
    assert tree_differences(expected, imgscan_tree(f"oci-dir:{layout.path}:{tag}")) == []
    by_digest = imgscan_tree(f"oci-dir:{layout.path}@{layout.manifest_digest(tag)}")
    assert tree_differences(expected, by_digest) == []


def test_the_layered_image_exercises_what_it_claims(mini_images: ImageSet) -> None:
    """Guard the fixture: the tools really wrote whiteouts, an opaque marker and a re-add (umoci) and
    per-file whiteouts for an emptied directory (buildah with vfs writes no opaque marker)."""
    names = [[m.name for m in layer] for layer in imagebuild.layer_members(mini_images.umoci, FINAL_TAG)]
    assert "etc/.wh.motd" in names[1] and "usr/share/doc/.wh.bash" in names[1]
    assert "etc/motd" in names[2]
    assert f"{imagebuild.OPAQUE_DIR}/.wh..wh..opq" in names[3]
    assert mini_images.buildah is not None
    bnames = [[m.name for m in layer] for layer in imagebuild.layer_members(mini_images.buildah)]
    assert any(n.startswith(f"{imagebuild.OPAQUE_DIR}/.wh.") for n in bnames[2])
    tree = mini_images.umoci.expected_tree(FINAL_TAG)
    assert "etc/motd" in tree and imagebuild.DELETED_DIR + "/README.v3" in tree
    assert "usr/share/zoneinfo/Europe" not in tree and "usr/share/zoneinfo/UTC" in tree
    assert "usr/share/zoneinfo/Europe" in mini_images.umoci.expected_tree("v3")


@pytest.mark.parametrize("image_set", IMAGE_SETS, indirect=True)
def test_layer_index_is_the_last_writer(image_set: ImageSet) -> None:
    """Every surviving non-directory reports the last layer that wrote it: a path deleted in layer 1 and
    re-added in layer 2 says 2; the same for the docker-archive copy (same layers, same order)."""
    layout = image_set.umoci
    writer = imagebuild.last_writer(layout, FINAL_TAG)
    for ref in (f"oci-dir:{layout.path}:{FINAL_TAG}", f"docker-archive:{image_set.docker_archive}"):
        entries = {e["path"].lstrip("/"): e for e in imgscan_entries(ref)}
        assert entries["etc/motd"]["layer"] == 2
        assert entries[f"{imagebuild.DELETED_DIR}/README.v3"]["layer"] == 2
        assert entries["usr/share/zoneinfo/UTC"]["layer"] == 3
        assert "opt/app/bin/tool" not in entries and entries["opt/app/bin/tool-hl"]["size"] > 0
        wrong = {
            p: (e["layer"], writer.get(p))
            for p, e in entries.items()
            if e["type"] != "dir" and e["layer"] != writer.get(p)
        }
        assert wrong == {}, f"{ref}: path: (imgscan layer, last writer) {sorted(wrong.items())[:20]}"
    base = {e["path"]: e for e in imgscan_entries(f"oci-dir:{layout.path}:base")}
    assert base["/etc/motd"]["layer"] == 0
    assert "/etc/motd" not in {e["path"] for e in imgscan_entries(f"oci-dir:{layout.path}:v2")}


def _inspect(ref: str) -> dict:
    proc = imgscan("inspect", ref, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _layers_from_layout(layout: Layout, tag: str | None) -> list[dict]:
    manifest, config = layout.manifest(tag), layout.config(tag)
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"])
    return [
        {"digest": d["digest"], "diff_id": diff, "media_type": d["mediaType"], "size": d["size"]}
        for d, diff in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


def _layer_facts(data: dict) -> list[dict]:
    return [{k: layer[k] for k in ("digest", "diff_id", "media_type", "size")} for layer in data["layers"]]


@pytest.mark.parametrize("image_set", IMAGE_SETS, indirect=True)
def test_inspect_layers_equal_the_manifest(image_set: ImageSet) -> None:
    """inspect --json: manifest digest, and per layer digest, diff_id, media type and size, read back from
    the layout files; the oci-archive holds the same blobs; the docker-archive the same diff_ids."""
    cases: list[tuple[str, Layout, str | None]] = [
        *((f"oci-dir:{image_set.umoci.path}:{tag}", image_set.umoci, tag) for tag in UMOCI_TAGS),
        (f"oci-dir:{image_set.zstd.path}", image_set.zstd, None),
        (f"oci-dir:{image_set.plain.path}", image_set.plain, None),
        (f"oci-archive:{image_set.oci_archive}", image_set.umoci, FINAL_TAG),
    ]
    for ref, layout, tag in cases:
        data = _inspect(ref)
        assert data["digest"] == layout.manifest_digest(tag), ref
        assert _layer_facts(data) == _layers_from_layout(layout, tag), ref
        assert data["config"] == layout.config(tag).get("config", {}), ref
    assert {x["media_type"] for x in _layer_facts(_inspect(f"oci-dir:{image_set.zstd.path}"))} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    docker = _inspect(f"docker-archive:{image_set.docker_archive}")
    diff_ids = image_set.umoci.config(FINAL_TAG)["rootfs"]["diff_ids"]
    assert [x["diff_id"] for x in docker["layers"]] == diff_ids
    assert len(docker["layers"]) == len(image_set.umoci.manifest(FINAL_TAG)["layers"])
    assert docker["config"] == image_set.umoci.config(FINAL_TAG)["config"]


def test_several_tags_and_none_given_lists_the_choices(mini_images: ImageSet) -> None:
    """An index with four tags and no tag in the reference: exit 2, one line naming every tag."""
    path = mini_images.umoci.path
    for ref in (f"oci-dir:{path}", str(path)):
        for command in (("inspect", ref, "--json"), ("ls", ref, "-R", "--json")):
            line = assert_one_error_line(imgscan(*command))
            missing = [tag for tag in UMOCI_TAGS if tag not in line]
            assert missing == [], f"{command}: {line}"


def test_unknown_tag_and_digest_are_clean_errors(mini_images: ImageSet) -> None:
    path = mini_images.umoci.path
    assert_one_error_line(imgscan("ls", f"oci-dir:{path}:no-such-tag", "-R", "--json"))
    assert_one_error_line(imgscan("ls", f"oci-dir:{path}@sha256:{'0' * 64}", "-R", "--json"))
    assert_one_error_line(imgscan("ls", f"oci-archive:{mini_images.oci_archive}:no-such-tag", "--json"))
    assert_one_error_line(imgscan("ls", f"docker-archive:{mini_images.docker_archive}:no/such:tag", "--json"))
    assert_one_error_line(imgscan("ls", str(path / "does-not-exist"), "--json"))


def test_dir_source_matches_host_tree_of_the_same_dir(mini_images: ImageSet) -> None:
    """The dir: source reads a rootfs in place: its view is exactly what is on disk (no symlink followed on
    the host: the image's absolute links point into the image)."""
    root = mini_images.rootfs_dir
    assert tree_differences(host_tree(str(root)), imgscan_tree(f"dir:{root}")) == []
