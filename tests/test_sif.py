"""SIF files and their squashfs, built here by the real tools (mksquashfs, siftool) and checked against
unsquashfs: the whole tree imgscan sees must be the tree unsquashfs unpacks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgscan.errors import ImgscanError
from imgscan.layers.entry import FILE, HARDLINK
from imgscan.layers.index import LayerIndex, Limits
from imgscan.layers.squashfs import Squashfs, index_squashfs
from imgscan.sources.image import SQUASHFS, BlobRegion
from imgscan.sources.sif import DESCRIPTOR, HEADER, env_from_script, labels_from_json, open_sif
from tests.treecompare import host_tree, imgscan_tree, tree_differences

TOOLS = ("mksquashfs", "unsquashfs", "siftool")
pytestmark = [
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="device nodes, setuid bits and owners need root"),
]
LABELS = {"org.label-schema.build-arch": "amd64", "maintainer": "imgscan tests", "version": 3}
DEFFILE = "Bootstrap: scratch\n\n%environment\n    export FROM_DEF=1\n"
ENV_SCRIPT = 'export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-"/opt/lib"}"\nexport PATH="/opt/bin:/usr/bin"\n'
RANDOM = random.Random(1234)


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def make_rootfs(root: Path) -> Path:
    """Every kind of entry a squashfs can hold, with odd modes, sizes around block boundaries, long and
    non-ASCII names, a directory whose listing spans several metadata blocks, and extended attributes."""
    for d in ("etc", "usr/bin", "usr/lib/x86_64-linux-gnu", "opt/private", "tmp", "dev", "many", "a/b/c/d/e"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("sifhost\n")
    (root / "etc/empty").write_bytes(b"")
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF" + RANDOM.randbytes(300_000))  # full blocks plus a fragment tail
    tool.chmod(0o755)
    os.link(tool, root / "usr/bin/tool-hardlink")
    os.link(tool, root / "usr/lib/tool-third-link")
    (root / "usr/bin/suid").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/suid").chmod(0o4755)
    (root / "usr/bin/sgid").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/sgid").chmod(0o2711)
    (root / "usr/bin/exact-block").write_bytes(RANDOM.randbytes(131072))
    (root / "usr/bin/compressible").write_bytes(b"abcdefgh" * 100_000)
    with open(root / "usr/bin/sparse", "wb") as f:
        f.truncate(3 * 131072 + 10)
        f.seek(131072 + 5)
        f.write(b"middle")
    lib = root / "usr/lib/x86_64-linux-gnu/libreal.so.1"
    lib.write_bytes(RANDOM.randbytes(5000))
    os.setxattr(lib, "user.imgscan", b"xattr value")
    os.symlink("libreal.so.1", root / "usr/lib/x86_64-linux-gnu/librel.so")
    os.symlink("/usr/lib/x86_64-linux-gnu/libreal.so.1", root / "usr/lib/libabs.so")
    os.symlink("../../nowhere", root / "usr/lib/dangling")
    os.symlink("usr/bin", root / "bin")
    os.symlink("x" * 1000, root / "etc/long-target")
    (root / "opt/private/secret").write_text("s")
    (root / "opt/private/secret").chmod(0o600)
    (root / "opt/private").chmod(0o700)
    (root / "etc/readonly").write_text("r")
    (root / "etc/readonly").chmod(0o444)
    (root / "tmp").chmod(0o1777)
    (root / "etc/weird mode").write_text("w")
    (root / "etc/weird mode").chmod(0o7000)
    (root / "etc/naïve — ünïcode").write_text("u")
    (root / ("n" * 255)).write_text("long name")
    (root / "a/b/c/d/e/deep").write_text("deep")
    os.mkfifo(root / "dev/fifo")
    (root / "dev/fifo").chmod(0o620)
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev/loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(root / "dev/bigdev", 0o600 | stat.S_IFCHR, os.makedev(300, 70000))
    for i in range(600):
        (root / "many" / f"file-with-a-rather-long-name-{i:04d}.txt").write_text(str(i) * (i % 7))
    root.chmod(0o751)
    return root


@dataclass
class Built:
    root: Path  # the rootfs the squashfs was made from
    sqfs: Path
    sif: Path
    unpacked: Path  # unsquashfs -d of sqfs: the reference tree


def mksquashfs(root: Path, out: Path, *opts: str) -> Path:
    run("mksquashfs", root, out, "-noappend", "-all-root", "-quiet", "-no-progress", *opts)
    return out


def make_sif(sqfs: Path, sif: Path, *extra: tuple[int, Path], arch: int = 2, parttype: int = 2) -> Path:
    run("siftool", "new", sif)
    for datatype, path in extra:
        run("siftool", "add", sif, path, "--datatype", str(datatype))
    run("siftool", "add", sif, sqfs, "--datatype", "4", "--parttype", str(parttype), "--partfs", "1",
        "--partarch", str(arch), "--groupid", "1")  # fmt: skip
    return sif


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("sif")
    root = make_rootfs(base / "rootfs")
    sqfs = mksquashfs(root, base / "f.sqfs")
    (base / "labels.json").write_text(json.dumps(LABELS))
    (base / "Singularity.def").write_text(DEFFILE)
    (base / "env.sh").write_text(ENV_SCRIPT)
    sif = make_sif(sqfs, base / "f.sif", (1, base / "Singularity.def"), (3, base / "labels.json"),
                   (2, base / "env.sh"))  # fmt: skip
    unpacked = base / "unpacked"
    run("unsquashfs", "-no-progress", "-d", unpacked, sqfs)
    return Built(root, sqfs, sif, unpacked)


def whole(path: Path) -> BlobRegion:
    return BlobRegion(str(path), 0, path.stat().st_size)


def index_tree(index: LayerIndex) -> dict[str, tuple]:
    """The index in host_tree()'s shape: a hardlink is a file with its target's mode and size."""
    tree = {}
    for path, e in index.entries.items():
        if not path:
            continue
        if e.kind == HARDLINK:
            e = index.entries[e.link_target]
        target = e.link_target if e.kind == "symlink" else None
        tree[path] = (e.kind, e.mode, e.size if e.kind == FILE else None, target)
    return tree


def assert_same_tree(expected: dict[str, tuple], actual: dict[str, tuple]) -> None:
    diffs = tree_differences(expected, actual)
    assert not diffs, "\n".join(diffs)


def test_index_of_sif_partition_matches_unsquashfs(built: Built) -> None:
    image = open_sif(str(built.sif), f"sif:{built.sif}")
    (layer,) = image.layers
    assert layer.format == SQUASHFS and layer.region is not None
    index = index_squashfs(layer.region, 0, Limits())
    assert_same_tree(host_tree(str(built.unpacked)), index_tree(index))
    assert index.entries[""].mode == 0o751 and index.entries[""].kind == "dir"
    assert not index.whiteouts and not index.opaque_dirs and not index.warnings


def test_cli_tree_matches_unsquashfs(built: Built) -> None:
    if importlib.util.find_spec("imgscan.cli") is None:
        pytest.skip("the CLI (imgscan ls) does not exist yet")
    assert_same_tree(host_tree(str(built.unpacked)), imgscan_tree(f"sif:{built.sif}"))


def test_entry_details(built: Built) -> None:
    index = index_squashfs(whole(built.sqfs), 3, Limits())
    e = index.entries
    paths = ("usr/bin/tool", "usr/bin/tool-hardlink", "usr/lib/tool-third-link")
    links = [p for p in paths if e[p].kind == HARDLINK]
    (first,) = (p for p in paths if e[p].kind == FILE)
    assert first == "usr/bin/tool"  # the first path walked: parents before children, names sorted
    assert len(links) == 2 and all(e[p].link_target == first for p in links)
    assert all(e[p].size == 300_004 and e[p].mode == 0o755 for p in links)
    assert e["usr/bin/suid"].mode == 0o4755 and e["usr/bin/sgid"].mode == 0o2711
    assert e["tmp"].mode == 0o1777 and e["etc/weird mode"].mode == 0o7000
    assert e["dev/null"].kind == "char" and (e["dev/null"].devmajor, e["dev/null"].devminor) == (1, 3)
    assert e["dev/loop0"].kind == "block" and (e["dev/loop0"].devmajor, e["dev/loop0"].devminor) == (7, 0)
    assert (e["dev/bigdev"].devmajor, e["dev/bigdev"].devminor) == (300, 70000)
    assert e["dev/fifo"].kind == "fifo" and e["dev/fifo"].mode == 0o620
    assert e["usr/lib/libabs.so"].link_target == "/usr/lib/x86_64-linux-gnu/libreal.so.1"
    assert e["etc/long-target"].size == 1000
    assert all(x.layer == 3 and x.uid == 0 and x.gid == 0 for x in e.values())
    assert next(iter(e)) == ""  # root first, then parents before children
    assert list(e).index("usr") < list(e).index("usr/bin") < list(e).index("usr/bin/tool")


def test_owners_and_times_kept(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d/f").write_text("x")
    os.chown(root / "d/f", 1234, 5678)
    os.chown(root / "d", 42, 43)
    os.utime(root / "d/f", (1_600_000_000, 1_600_000_000))
    sqfs = tmp_path / "o.sqfs"
    run("mksquashfs", root, sqfs, "-noappend", "-quiet", "-no-progress")
    e = index_squashfs(whole(sqfs), 0, Limits()).entries
    assert (e["d/f"].uid, e["d/f"].gid, e["d/f"].mtime) == (1234, 5678, 1_600_000_000)
    assert (e["d"].uid, e["d"].gid) == (42, 43)


@pytest.mark.parametrize(
    "opts",
    [
        ("-comp", "xz"),
        ("-comp", "lzma"),
        ("-comp", "zstd"),
        ("-b", "4K"),
        ("-b", "1M", "-comp", "zstd"),
        ("-noI", "-noD", "-noF", "-noX"),  # nothing compressed: the uncompressed-block paths
        ("-no-fragments",),
        ("-always-use-fragments",),
        ("-no-xattrs", "-no-sparse"),
    ],
    ids=" ".join,
)
def test_squashfs_variants_match_unsquashfs(built: Built, tmp_path: Path, opts: tuple[str, ...]) -> None:
    sqfs = mksquashfs(built.root, tmp_path / "v.sqfs", *opts)
    index = index_squashfs(whole(sqfs), 0, Limits())
    assert_same_tree(host_tree(str(built.unpacked)), index_tree(index))
    with Squashfs(whole(sqfs)) as fs:
        for path in ("usr/bin/tool", "usr/bin/sparse", "many/file-with-a-rather-long-name-0599.txt"):
            with fs.open(fs.lookup(path)) as f:
                assert f.read() == (built.unpacked / path).read_bytes(), path


@pytest.mark.parametrize("comp", ["lzo", "lz4"])
def test_unsupported_compressor_is_a_clear_error(built: Built, tmp_path: Path, comp: str) -> None:
    sqfs = mksquashfs(built.root / "etc", tmp_path / "c.sqfs", "-comp", comp)
    with pytest.raises(ImgscanError, match=f"compressed with {comp} is not supported"):
        index_squashfs(whole(sqfs), 0, Limits())


def test_file_reads_are_random_access(built: Built) -> None:
    with Squashfs(whole(built.sqfs)) as fs:
        for path, ino in fs.walk():
            if ino.kind == FILE:
                with fs.open(ino) as f:
                    assert f.read() == (built.unpacked / path).read_bytes(), path
        data = (built.unpacked / "usr/bin/tool").read_bytes()
        with fs.open(fs.lookup("/usr/bin/tool")) as f:
            assert f.read(4) == b"\x7fELF"
            f.seek(-100, os.SEEK_END)
            assert f.read() == data[-100:]
            f.seek(131_000)
            assert f.read(1000) == data[131_000:132_000]  # across a block boundary
            f.seek(len(data) + 10)
            assert f.read(10) == b""
        with fs.open(fs.lookup("usr/bin/sparse")) as f:
            f.seek(131072 + 5)
            assert f.read(6) == b"middle"
        with pytest.raises(ImgscanError, match="no such file"):
            fs.lookup("usr/bin/missing")
        with pytest.raises(ImgscanError, match="not a regular file"):
            fs.open(fs.lookup("usr/bin"))


def test_socket_is_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
        sqfs = mksquashfs(root, tmp_path / "s.sqfs")
    index = index_squashfs(whole(sqfs), 0, Limits())
    assert set(index.entries) == {"", "f"}
    assert index.warnings == ["skipped sockets: 1 entry (first: 'sock')"]


def test_max_entries_limit(built: Built) -> None:
    with pytest.raises(ImgscanError, match="more than 100 entries"):
        index_squashfs(whole(built.sqfs), 0, Limits(max_entries=100))


def test_open_sif_image(built: Built) -> None:
    image = open_sif(str(built.sif), "singularity:x")
    assert image.transport == "singularity" and image.reference == "singularity:x"
    assert image.digest == "sha256:" + hashlib.sha256(built.sif.read_bytes()).hexdigest()
    assert image.platform == "linux/amd64"
    labels = {**LABELS, "version": "3"}
    assert image.config == {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["LD_LIBRARY_PATH=/opt/lib", "PATH=/opt/bin:/usr/bin"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    assert image.container_config["Labels"] == labels
    assert image.metadata["deffile"] == DEFFILE
    (layer,) = image.layers
    assert layer.media_type == "application/vnd.sylabs.sif.layer.v1.squashfs" and layer.digest is None
    assert layer.region is not None and layer.size == layer.region.size == built.sqfs.stat().st_size
    with layer.region.open() as f:
        assert f.read() == built.sqfs.read_bytes()
    info = subprocess.run(["siftool", "list", str(built.sif)], check=True, capture_output=True, text=True)
    assert f"{layer.region.offset}-{layer.region.offset + layer.region.size}" in info.stdout


def test_sif_arch_and_plain_sif(built: Built, tmp_path: Path) -> None:
    image = open_sif(str(make_sif(built.sqfs, tmp_path / "arm.sif", arch=4)), "x")
    assert image.platform == "linux/arm64" and image.config["architecture"] == "arm64"
    assert image.config["config"] == {"Env": [], "Labels": {}} and "deffile" not in image.metadata


# ---- bad input: always ImgscanError with one line, never another exception


def sif_fields(sif: Path) -> tuple[int, int]:
    """(descriptor table offset, descriptor count) from the global header."""
    raw = sif.read_bytes()[: HEADER.size]
    fields = HEADER.unpack(raw)
    return fields[9], fields[8]


def patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[at : at + len(data)] = data
    dst.write_bytes(raw)
    return dst


def partition_descriptor_at(sif: Path) -> int:
    descoff, count = sif_fields(sif)
    raw = sif.read_bytes()
    for i in range(count):
        at = descoff + i * DESCRIPTOR.size
        datatype, used = struct.unpack_from("<iB", raw, at)
        if used and datatype == 0x4004:
            return at
    raise AssertionError("no partition descriptor")


def expect_error(path: Path, match: str) -> None:
    with pytest.raises(ImgscanError, match=match) as err:
        image = open_sif(str(path), "x")
        for layer in image.layers:
            assert layer.region is not None
            index_squashfs(layer.region, 0, Limits())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("keep", [0, 40, 127, 200, 4096 + 585 * 2, 40_000, -1000])
def test_truncated_sif(built: Built, tmp_path: Path, keep: int) -> None:
    raw = built.sif.read_bytes()
    cut = tmp_path / "cut.sif"
    cut.write_bytes(raw[:keep])
    expect_error(cut, "not a SIF|truncated|outside")


def test_wrong_magic(built: Built, tmp_path: Path) -> None:
    expect_error(patched(built.sif, tmp_path / "m.sif", 32, b"SIF_MAGIK"), "not a SIF file")


def test_hostile_descriptor_count(built: Built, tmp_path: Path) -> None:
    expect_error(patched(built.sif, tmp_path / "n.sif", 88, struct.pack("<q", 1 << 40)), "descriptors")


def test_descriptor_past_eof(built: Built, tmp_path: Path) -> None:
    at = partition_descriptor_at(built.sif) + 17  # after datatype, used, id, group, link: offset, size
    for field, value in ((0, built.sif.stat().st_size - 100), (8, 1 << 50), (0, -5)):
        bad = patched(built.sif, tmp_path / "p.sif", at + field, struct.pack("<q", value))
        expect_error(bad, "lies outside the file")


def test_no_primary_partition(built: Built, tmp_path: Path) -> None:
    data_only = make_sif(built.sqfs, tmp_path / "d.sif", parttype=3)
    expect_error(data_only, "no primary system partition \\(partitions: squashfs\\)")
    run("siftool", "new", tmp_path / "empty.sif")
    expect_error(tmp_path / "empty.sif", "no primary system partition \\(partitions: none\\)")


def test_oci_sif_is_refused_clearly(built: Built, tmp_path: Path) -> None:
    """This siftool can't write OCI-SIF objects: retype a real SIF's objects as an OCI root index."""
    at = partition_descriptor_at(built.sif)
    bad = patched(built.sif, tmp_path / "oci.sif", at, struct.pack("<i", 0x400A))
    expect_error(bad, "OCI-SIF .*singularity push")


def test_corrupt_squashfs_header(built: Built, tmp_path: Path) -> None:
    start = open_sif(str(built.sif), "x").layers[0].region.offset  # type: ignore[union-attr]
    expect_error(patched(built.sif, tmp_path / "s.sif", start, b"hsqX"), "not a squashfs")
    expect_error(patched(built.sif, tmp_path / "s.sif", start + 28, struct.pack("<H", 3)), "squashfs 3.0")
    expect_error(patched(built.sif, tmp_path / "s.sif", start + 12, struct.pack("<I", 1000)), "block size")
    expect_error(patched(built.sif, tmp_path / "s.sif", start + 40, struct.pack("<Q", 1 << 40)), "claims")


def test_fuzzed_squashfs_raises_only_imgscan_error(built: Built, tmp_path: Path) -> None:
    """Random damage to the metadata (tables at the end) and anywhere: a result or ImgscanError."""
    sqfs = mksquashfs(built.root / "usr", tmp_path / "small.sqfs")
    raw = sqfs.read_bytes()
    inode_table = struct.unpack_from("<Q", raw, 64)[0]
    rng = random.Random(99)
    bad = tmp_path / "bad.sqfs"
    outcomes = {"ok": 0, "error": 0}
    for trial in range(300):
        damaged = bytearray(raw)
        lo = inode_table if trial % 3 else 0
        for _ in range(rng.choice((1, 4, 32))):
            damaged[rng.randrange(lo, len(raw))] = rng.randrange(256)
        bad.write_bytes(damaged)
        try:
            index_squashfs(whole(bad), 0, Limits())
            with Squashfs(whole(bad)) as fs:
                for _, ino in fs.walk():
                    if ino.kind == FILE:
                        with fs.open(ino) as f:  # as the analysers do: the head and the tail
                            f.read(1 << 20)
                            f.seek(-4096, os.SEEK_END)
                            f.read()
            outcomes["ok"] += 1
        except ImgscanError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 50, outcomes


def test_truncated_squashfs(built: Built, tmp_path: Path) -> None:
    raw = built.sqfs.read_bytes()
    used = struct.unpack_from("<Q", raw, 40)[0]  # the rest is padding to 4 KiB
    cut = tmp_path / "t.sqfs"
    for keep in (10, 200, len(raw) // 2, used - 10):
        cut.write_bytes(raw[:keep])
        with pytest.raises(ImgscanError, match=r"truncated|claims"):
            index_squashfs(whole(cut), 0, Limits())
        if keep < used - 10:  # a region running past the file's end: the first read there fails
            with pytest.raises(ImgscanError, match=r"truncated|ends before"):
                index_squashfs(BlobRegion(str(cut), 0, len(raw)), 0, Limits())


@pytest.mark.slow
def test_debootstrap_rootfs_matches_unsquashfs(debootstrap_tar: Path, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    run("tar", "--numeric-owner", "-xpf", debootstrap_tar, "-C", root)
    sqfs = mksquashfs(root, tmp_path / "deb.sqfs")
    shutil.rmtree(root)
    sif = make_sif(sqfs, tmp_path / "deb.sif")
    run("unsquashfs", "-no-progress", "-d", tmp_path / "unpacked", sqfs)
    region = open_sif(str(sif), "x").layers[0].region
    assert region is not None
    index = index_squashfs(region, 0, Limits())
    assert_same_tree(host_tree(str(tmp_path / "unpacked")), index_tree(index))
    assert any(e.kind == HARDLINK for e in index.entries.values())  # perl, gunzip...


# ---- metadata inside the squashfs (/.singularity.d), read by the pure helpers


def test_env_from_apptainer_scripts() -> None:
    docker2singularity = (
        "#!/bin/sh\n"
        'export PATH="/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin"\n'
        'export CUDA_VERSION="${CUDA_VERSION:-"12.4.1"}"\n'
        'export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-"/usr/local/nvidia/lib:/usr/local/nvidia/lib64"}"\n'
        'export NVIDIA_VISIBLE_DEVICES="${NVIDIA_VISIBLE_DEVICES:-}"\n'
        'export QUOTED="${QUOTED:-"a \\"b\\" \\$c"}"\n'
    )
    environment = (
        "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        "export LC_ALL=C  # comment\n"
        "MODEL_DIR=/models; export MODEL_DIR\n"
        'export LD_LIBRARY_PATH="/opt/extra:$LD_LIBRARY_PATH"\n'
        "export SINGLE='$not expanded'\n"
        "export HOST=$(hostname)\n"
    )
    base = (  # 99-base.sh: runtime-dependent branches are not the image's environment
        'if [ -z "$LD_LIBRARY_PATH" ]; then\n    LD_LIBRARY_PATH="/.singularity.d/libs"\nelse\n'
        '    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\n'
        'if test -z "${PS1:-}"; then export PS1="Apptainer> "; fi\n'
        '[ -n "$X" ] && export PATH=/wrong\n'
        "unset NVIDIA_VISIBLE_DEVICES \\\n  NOT_SET\n"
    )
    assert env_from_script(docker2singularity + environment + base) == [
        "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "CUDA_VERSION=12.4.1",
        "LD_LIBRARY_PATH=/opt/extra:/usr/local/nvidia/lib:/usr/local/nvidia/lib64",
        'QUOTED=a "b" $c',
        "LC_ALL=C",
        "MODEL_DIR=/models",
        "SINGLE=$not expanded",
    ]


def test_labels_from_json() -> None:
    assert labels_from_json(b'{"a": "1", "n": 2, "l": [1]}') == {"a": "1", "n": "2", "l": "[1]"}
    with pytest.raises(ImgscanError, match="not valid JSON"):
        labels_from_json(b"{nope")
    with pytest.raises(ImgscanError, match="expected a JSON object"):
        labels_from_json(b"[1, 2]")


def test_bad_labels_object_in_sif(built: Built, tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text("not json")
    sif = make_sif(built.sqfs, tmp_path / "l.sif", (3, tmp_path / "labels.json"))
    expect_error(sif, "labels object .* not valid JSON")


def test_env_and_labels_from_the_tree_when_descriptors_lack_them(tmp_path: Path) -> None:
    """Apptainer keeps Env and labels inside the squashfs; inspect reads them from there."""
    root = tmp_path / "rootfs"
    (root / ".singularity.d/env").mkdir(parents=True)
    (root / ".singularity.d/env/10-docker2singularity.sh").write_text(
        '#!/bin/sh\nexport PATH="/usr/local/bin:/usr/bin"\n'
        'export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-"/opt/x"}"\n'
    )
    (root / ".singularity.d/env/90-environment.sh").write_text('export CUDA_VERSION="13.0"\n')
    (root / ".singularity.d/labels.json").write_text(json.dumps({"org.opencontainers.image.title": "t"}))
    sif = make_sif(mksquashfs(root, tmp_path / "f.sqfs"), tmp_path / "f.sif")
    out = subprocess.run(
        [sys.executable, "-m", "imgscan", "inspect", f"sif:{sif}", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    config = json.loads(out)["config"]
    assert config["Env"] == ["PATH=/usr/local/bin:/usr/bin", "LD_LIBRARY_PATH=/opt/x", "CUDA_VERSION=13.0"]
    assert config["Labels"] == {"org.opencontainers.image.title": "t"}
