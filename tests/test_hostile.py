"""Hostile images (crafted with tests/craft.py: no real tool writes these) must give a clean outcome.

Each test names its expected outcome:
  error    exit 2, exactly one stderr line 'imgscan: error: ...' (corrupt or unverifiable input)
  warning  exit 0, stderr only 'imgscan: warning: ...' lines, at least one (a hostile entry skipped)
  ok       exit 0, nothing on stderr (legal if unusual input)
Always: no traceback; nothing written outside the run's own TMPDIR (cwd, the sentinel paths that the
hostile names aim at and the host files they target are checked after every run); the host's files are
never read through the image (a bait file of a known size and content must never show up).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import craft
from tests.craft import Member, OciWriter, device, directory, file, hardlink, symlink, tar_bytes
from tests.measured import run_imgscan
from tests.treecompare import host_tree, imgscan_tree, tree_differences

REPO = Path(__file__).resolve().parent.parent
UP = "../" * 30  # enough to climb from any cwd or scratch dir to /
BAIT_SIZE = 12_345
BAIT_MARK = "imgscan-bait-content"
GIB = 1 << 30
RSS_LIMIT_KB = 1_500_000  # 1.5 GB for a million entries
SMALL_RSS_LIMIT_KB = 200_000  # 200 MB for everything streamed (bomb, huge claimed sizes)


@dataclass
class Result:
    returncode: int
    stdout_path: Path
    stderr: str
    maxrss_kb: int
    seconds: float

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def json(self) -> dict:
        return json.loads(self.stdout)

    def entries(self) -> dict[str, dict]:
        return {e["path"]: e for e in self.json()["entries"]}


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Workspace:
    """A hostile image under base/image, and runs of the real CLI with cwd and TMPDIR inside base.

    sentinel: /tmp/imgscan-escape-<random>, the directory hostile names aim at: must never appear.
    bait: /tmp/imgscan-bait-<random>/secret, a host file hostile links aim at: must never be read.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.image = base / "image"
        self.cwd = base / "cwd" / "a" / "b" / "c" / "d"
        self.tmp = base / "tmp"
        self.home = base / "home"
        for d in (self.cwd, self.tmp, self.home):
            d.mkdir(parents=True)
        token = uuid.uuid4().hex[:12]
        self.sentinel = Path(f"/tmp/imgscan-escape-{token}")
        self.bait_dir = Path(f"/tmp/imgscan-bait-{token}")
        self.bait_dir.mkdir()
        self.bait = self.bait_dir / "secret"
        self.bait.write_text(
            (BAIT_MARK + "\n") * (BAIT_SIZE // (len(BAIT_MARK) + 1))
            + "x" * (BAIT_SIZE % (len(BAIT_MARK) + 1))
        )
        assert self.bait.stat().st_size == BAIT_SIZE
        self.host_files = {p: _sha(p) for p in ("/etc/passwd", "/etc/hostname") if os.path.exists(p)}
        self.runs = 0

    def writer(self) -> OciWriter:
        return OciWriter(self.image)

    def layout(self, *layers: list[Member], compression: str = "gzip") -> Path:
        """One image, tagged 'latest', of the given layers."""
        w = self.writer()
        w.add_image([w.add_layer(tar_bytes(members), compression) for members in layers])
        return w.write_index()

    def ref(self) -> str:
        return f"oci-dir:{self.image}"

    def run(self, *args: str, timeout: float = 300) -> Result:
        """Run `python -m imgscan ARGS` and check the host afterwards (see class doc)."""
        before = _snapshot(self.base / "cwd")
        self.runs += 1
        out = self.base / f"stdout-{self.runs}"
        err = self.base / f"stderr-{self.runs}"
        env = dict(
            os.environ,
            TMPDIR=str(self.tmp),
            HOME=str(self.home),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            PYTHONPATH=str(REPO),
        )
        env.pop("IMGSCAN_DEBUG", None)
        start = time.monotonic()
        with open(out, "wb") as fo, open(err, "wb") as fe:
            returncode, maxrss_kb = run_imgscan(args, env, fo, fe, timeout, self.cwd)
        seconds = time.monotonic() - start
        assert returncode != -9, f"imgscan {' '.join(args)} ran past {timeout} s"
        result = Result(returncode, out, err.read_text(errors="replace"), maxrss_kb, seconds)
        self.check_host(before)
        return result

    def check_host(self, cwd_before: dict[str, tuple]) -> None:
        """Nothing escaped: no sentinel, bait untouched, host files unchanged, cwd unchanged, TMPDIR empty."""
        escaped = sorted(str(p) for p in Path("/tmp").glob(self.sentinel.name + "*"))
        assert escaped == [], f"written outside the scratch space: {escaped}"
        assert sorted(os.listdir(self.bait_dir)) == ["secret"] and self.bait.stat().st_size == BAIT_SIZE
        for path, digest in self.host_files.items():
            assert _sha(path) == digest, f"host file {path} changed"
        assert _snapshot(self.base / "cwd") == cwd_before, "imgscan wrote into its working directory"
        leftover = sorted(os.listdir(self.tmp))
        assert leftover == [], f"imgscan left temporary files behind: {leftover}"

    def cleanup(self) -> None:
        shutil.rmtree(self.bait_dir, ignore_errors=True)
        shutil.rmtree(self.sentinel, ignore_errors=True)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    w = Workspace(tmp_path)
    yield w
    w.cleanup()


def expect(result: Result, outcome: str, warnings_before_error: bool = False) -> list[str]:
    """Check the outcome ('error', 'warning', 'ok', 'ok-or-warning'); return the stderr lines.

    An error is exactly one stderr line; warnings_before_error allows the scan's warnings before it (for
    the lookup of a path in an image that was read, with warnings, before the lookup failed)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    if outcome == "error":
        assert result.returncode == 2, (result.returncode, result.stderr, result.stdout[:2000])
        if warnings_before_error:
            assert all(line.startswith("imgscan: warning: ") for line in lines[:-1]), result.stderr
            lines = lines[-1:]
        assert len(lines) == 1 and lines[0].startswith("imgscan: error: "), result.stderr
        return lines
    assert result.returncode == 0, (result.returncode, result.stderr)
    bad = [line for line in lines if not line.startswith("imgscan: warning: ")]
    assert bad == [], result.stderr
    if outcome == "warning":
        assert lines, "expected at least one 'imgscan: warning:' line"
    elif outcome == "ok":
        assert lines == [], result.stderr
    return lines


def expect_error_or_ok(result: Result) -> str:
    """For resource limits: either it copes (exit 0) or it refuses in one clean line (exit 2)."""
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
        expect(result, "error")
        return "error"
    expect(result, "ok-or-warning")
    return "ok"


def assert_sane_listing(entries: dict[str, dict]) -> None:
    """Invariants of any merged view: clean absolute paths; every parent listed as a directory (so nothing
    sits under a symlink); no host bait leaked."""
    for path, e in entries.items():
        assert path.startswith("/") and path != "/", path
        parts = path[1:].split("/")
        assert all(p not in ("", ".", "..") for p in parts) and "\x00" not in path, path
        parent = "/" + "/".join(parts[:-1])
        if parent != "/":
            assert parent in entries, f"{path}: parent not listed"
            assert entries[parent]["type"] == "dir", f"{path}: parent is a {entries[parent]['type']}"
        assert not (e["type"] in ("file", "hardlink") and e["size"] == BAIT_SIZE), f"{path}: bait size"


def ls_all(ws: Workspace, outcome: str, ref: str | None = None) -> tuple[dict[str, dict], list[str]]:
    result = ws.run("ls", ref or ws.ref(), "-R", "--json")
    warnings = expect(result, outcome)
    assert BAIT_MARK not in result.stdout
    entries = result.entries()
    assert_sane_listing(entries)
    return entries, warnings


def some_files() -> list[Member]:
    return [directory("data/"), *(file(f"data/f{i}", f"content {i}\n" * 100) for i in range(50))]


# ---------------------------------------------------------------------------------------------- corrupt


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_truncated_layer_is_an_error(ws: Workspace, compression: str) -> None:
    """Outcome: error. The blob's digest matches the cut bytes (so only the stream itself is broken)."""
    tar = tar_bytes(some_files())
    w = ws.writer()
    layer = w.add_layer(tar, compression)
    blob = w.blob_path(layer.digest).read_bytes()
    cut = blob[: len(blob) // 2]
    w.blob_path(layer.digest).unlink()
    truncated = craft.Layer(w.add_blob(cut), len(cut), layer.diff_id, layer.media_type)
    w.add_image([truncated])
    w.write_index()
    expect(ws.run("ls", ws.ref(), "-R", "--json"), "error")


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_blob_not_matching_its_digest_is_an_error(ws: Workspace, which: str) -> None:
    """Outcome: error naming the digest. One byte of a stored blob flipped, its file name kept."""
    w = ws.writer()
    layer = w.add_layer(tar_bytes(some_files()))
    manifest_digest = w.add_image([layer])
    w.write_index()
    manifest = json.loads(w.blob_path(manifest_digest).read_bytes())
    target = {"layer": layer.digest, "config": manifest["config"]["digest"], "manifest": manifest_digest}
    # A flipped byte could break JSON syntax instead: JSON blobs get a trailing newline (still valid).
    if which == "layer":
        w.corrupt_blob(target[which], offset=len(w.blob_path(layer.digest).read_bytes()) // 2)
    else:
        path = w.blob_path(target[which])
        path.write_bytes(path.read_bytes() + b"\n")
    line = expect(ws.run("ls", ws.ref(), "-R", "--json"), "error")[0]
    assert "digest" in line.lower() or "sha256" in line.lower(), line


def test_diff_id_mismatch_is_an_error(ws: Workspace) -> None:
    """Outcome: error. The blob is intact but the config's rootfs.diff_ids names other uncompressed bytes."""
    w = ws.writer()
    layer = w.add_layer(tar_bytes(some_files()))
    wrong = craft.Layer(layer.digest, layer.size, craft.sha256(b"something else"), layer.media_type)
    w.add_image([wrong])
    w.write_index()
    line = expect(ws.run("ls", ws.ref(), "-R", "--json"), "error")[0]
    assert "diff" in line.lower() or "digest" in line.lower(), line


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "0" * 64,
        "sha256:../../../../../../etc/passwd",
        "sha256:/etc/passwd",
        "md5:abcd",
        "nonsense",
    ],
)
def test_missing_or_malformed_digest_is_an_error(ws: Workspace, digest: str) -> None:
    """Outcome: error. A manifest whose layer digest is absent or tries to walk out of blobs/."""
    w = ws.writer()
    layer = w.add_layer(tar_bytes(some_files()))
    w.add_image([craft.Layer(digest, layer.size, layer.diff_id, layer.media_type)])
    w.write_index()
    expect(ws.run("ls", ws.ref(), "-R", "--json"), "error")
    # The same digest in index.json (the manifest itself) is refused too.
    (ws.image / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [{"mediaType": craft.OCI_MANIFEST, "digest": digest, "size": 100}],
            }
        )
    )
    expect(ws.run("inspect", ws.ref(), "--json"), "error")


def test_layer_that_is_not_a_tar_is_an_error(ws: Workspace) -> None:
    """Outcome: error. Valid gzip, correct digests, but the content is not a tar archive."""
    w = ws.writer()
    w.add_image([craft.Layer(*_gz_blob(w, b"this is not a tar archive\n" * 1000))])
    w.write_index()
    expect(ws.run("ls", ws.ref(), "-R", "--json"), "error")


def _gz_blob(w: OciWriter, raw: bytes) -> tuple[str, int, str, str]:
    import gzip

    blob = gzip.compress(raw)
    return w.add_blob(blob), len(blob), craft.sha256(raw), craft.MEDIA_TYPES["gzip"]


# ----------------------------------------------------------------------------------------- names


def test_escaping_and_absolute_names(ws: Workspace) -> None:
    """Outcome: warning. Names climbing above the root ('../', 'a/../../') are skipped with a warning;
    absolute names are rooted at the image root (as tar and umoci do); nothing lands on the host."""
    s = ws.sentinel.name
    ws.layout(
        [
            file("ok", "fine\n"),
            file(f"{UP}tmp/{s}/dotdot", "escaped\n"),
            file(f"a/{UP}tmp/{s}/nested", "escaped\n"),
            file(f"../{s}-sibling", "escaped\n"),
            directory(f"{UP}tmp/{s}/dir/"),
            symlink(f"{UP}tmp/{s}/link", "/etc/passwd"),
            file(f"/tmp/{s}/abs", "rooted\n"),
            file(f"//tmp///{s}/./dup-slashes", "rooted\n"),
            file("./dot/./name", "rooted\n"),
            file(f"{UP}etc/passwd", "root::0:0::/:/bin/sh\n"),
        ]
    )
    entries, _ = ls_all(ws, "warning")
    assert "/ok" in entries
    assert f"/tmp/{s}/abs" in entries and f"/tmp/{s}/dup-slashes" in entries and "/dot/name" in entries
    assert not any(p.endswith(("/dotdot", "/nested", "-sibling", "/link")) for p in entries), sorted(entries)
    assert "/etc/passwd" not in entries


def test_symlinked_parent_pointing_outside(ws: Workspace) -> None:
    """Outcome: exit 0, warnings allowed. 'evil' -> outside, then 'evil/passwd': the entry is either placed
    by resolving 'evil' inside the image root or skipped with a warning; never written through the host
    link; a link to the host bait directory never lists the bait."""
    s = ws.sentinel.name
    ws.layout(
        [
            directory("etc/"),
            symlink("evil", "/../../../tmp/" + s),
            file("evil/passwd", "through a symlinked parent\n"),
            symlink("evil2", UP + "tmp/" + s),
            file("evil2/shadow", "through a relative symlinked parent\n"),
            symlink("etclink", UP + "etc"),
            file("etclink/passwd", "root::0:0::/:/bin/sh\n"),
            symlink("baitlink", str(ws.bait_dir)),
            file(f"baitlink/{ws.bait.name}-new", "x\n"),
        ]
    )
    entries, _ = ls_all(ws, "ok-or-warning")
    assert entries["/evil"]["type"] == "symlink" and entries["/baitlink"]["type"] == "symlink"
    for path in ("/evil/passwd", "/evil2/shadow", "/etclink/passwd"):
        assert path not in entries  # a listed path never sits under a symlink (see assert_sane_listing)
    if "/etc/passwd" in entries:  # resolved inside the image: the image's own /etc
        assert entries["/etc/passwd"]["size"] == len("root::0:0::/:/bin/sh\n")
    through = ws.run("ls", ws.ref(), "/baitlink/", "--json")
    assert BAIT_MARK not in through.stdout and 'secret"' not in through.stdout
    if through.returncode == 0:
        expect(through, "ok-or-warning")
        assert all(e["size"] != BAIT_SIZE for e in through.entries().values())
    else:
        expect(through, "error", warnings_before_error=True)


def test_hardlinks_outside_or_missing(ws: Workspace) -> None:
    """Outcome: warning. Hardlinks to '../../etc/passwd', to the host bait, and to a missing target are
    skipped with warnings; a hardlink to a file of the same layer is kept (a control)."""
    ws.layout(
        [
            directory("data/"),
            file("data/file", "x" * 77),
            hardlink("ok-hl", "data/file"),
            hardlink("hl-etc", "../../etc/passwd"),
            hardlink("hl-up", UP + "etc/passwd"),
            hardlink("hl-bait", UP + str(ws.bait).lstrip("/")),
            hardlink("hl-bait-abs", str(ws.bait)),
            hardlink("hl-missing", "nowhere/file"),
            hardlink("hl-self", "hl-self"),
            hardlink("hl-dir", "data"),
        ]
    )
    entries, _ = ls_all(ws, "warning")
    assert entries["/ok-hl"]["size"] == 77 and entries["/data/file"]["size"] == 77
    for name in ("hl-etc", "hl-up", "hl-bait", "hl-bait-abs", "hl-missing", "hl-self", "hl-dir"):
        assert f"/{name}" not in entries, entries.get(f"/{name}")


def test_device_nodes_and_fifo(ws: Workspace) -> None:
    """Outcome: ok. Character and block devices and fifos are listed (never created on the host), with
    their permission bits, including one named like a host path."""
    s = ws.sentinel.name
    ws.layout(
        [
            directory("dev/"),
            device("dev/null", tarfile.CHRTYPE, 1, 3, 0o666),
            device("dev/sda", tarfile.BLKTYPE, 8, 0, 0o660),
            Member("run/initctl", tarfile.FIFOTYPE, mode=0o600),
            device(f"tmp/{s}/null", tarfile.CHRTYPE, 1, 3, 0o666),
        ]
    )
    entries, _ = ls_all(ws, "ok")
    assert (entries["/dev/null"]["type"], entries["/dev/null"]["mode"]) == ("char", "0666")
    assert (entries["/dev/sda"]["type"], entries["/dev/sda"]["mode"]) == ("block", "0660")
    assert (entries["/run/initctl"]["type"], entries["/run/initctl"]["mode"]) == ("fifo", "0600")
    assert entries["/run"]["type"] == "dir"  # an implicit parent
    assert entries[f"/tmp/{s}/null"]["type"] == "char"


def test_symlink_loop(ws: Workspace) -> None:
    """Outcome: `ls -R` of the image is ok (the links are just listed); `ls` of a path through the loop
    is an error in one line; `ls` of the link itself shows the link (like ls -l)."""
    ws.layout(
        [
            symlink("a", "b"),
            symlink("b", "a"),
            symlink("self", "self"),
            symlink("abs", "/abs/x"),
            symlink("deep", "deep/deeper"),
            directory("d/"),
            symlink("d/up", "../d/up"),
        ]
    )
    entries, _ = ls_all(ws, "ok")
    assert {p: e["link_target"] for p, e in entries.items() if e["type"] == "symlink"} == {
        "/a": "b",
        "/b": "a",
        "/self": "self",
        "/abs": "/abs/x",
        "/deep": "deep/deeper",
        "/d/up": "../d/up",
    }
    for path in ("/a/", "/a/x", "/b/x/y", "/self/", "/abs/", "/deep/", "/d/up/z"):
        line = expect(ws.run("ls", ws.ref(), path, "--json"), "error")[0]
        assert "loop" in line.lower() or "too many" in line.lower() or "no such" in line.lower(), line
    link = ws.run("ls", ws.ref(), "/a", "--json")
    expect(link, "ok")
    assert [(e["path"], e["type"]) for e in link.json()["entries"]] == [("/a", "symlink")]


def test_nul_and_very_long_names(ws: Workspace) -> None:
    """Outcome: warning. A pax path holding NUL and one longer than PATH_MAX are skipped with a warning;
    legal long names (pax path, GNU ././@LongLink, long link targets) are listed exactly."""
    long_ok = "/".join(["x" * 200] * 5)  # 1004 bytes, components under NAME_MAX
    gnu_ok = "g" * 150 + "/" + "h" * 150
    too_long = "/".join(["y" * 250] * 20)  # 5019 bytes > PATH_MAX
    ws.layout(
        [
            file("plain", "p\n"),
            Member("nul-pax", data=b"n\n", pax={"path": "evil\x00/../../etc/passwd"}),
            Member("nul-link", tarfile.SYMTYPE, mode=0o777, pax={"linkpath": "/etc/\x00passwd"}),
            file(long_ok, "long\n"),
            Member(gnu_ok, data=b"gnu\n", format=tarfile.GNU_FORMAT),
            file(too_long, "too long\n"),
            symlink("longlink", "t" * 3000),
        ]
    )
    entries, warnings = ls_all(ws, "warning")
    assert "/plain" in entries
    assert entries["/" + long_ok]["size"] == 5
    assert entries["/" + gnu_ok]["size"] == 4
    assert entries["/longlink"]["link_target"] == "t" * 3000
    assert not any(p.startswith(("/evil", "/y")) for p in entries), [p[:60] for p in entries]
    assert len(warnings) <= 10, warnings  # grouped, not one per entry


def test_pax_header_claiming_a_huge_size(ws: Workspace) -> None:
    """Outcome: error (the entry runs past the end of the layer: a corrupt layer), in bounded memory."""
    ws.layout(
        [
            file("before", "b\n"),
            Member("huge", data=b"small\n", pax={"size": str(10**15)}),
            file("after", "a\n"),
        ]
    )
    result = ws.run("ls", ws.ref(), "-R", "--json")
    expect(result, "error")
    assert result.maxrss_kb < SMALL_RSS_LIMIT_KB, result.maxrss_kb


def test_ustar_size_past_the_end(ws: Workspace) -> None:
    """Outcome: error. A plain header claiming 8 GiB (octal size field) over a few bytes of data."""
    ws.layout([file("before", "b\n"), Member("big", data=b"tiny\n", size=8 * GIB)])
    result = ws.run("ls", ws.ref(), "-R", "--json")
    expect(result, "error")
    assert result.maxrss_kb < SMALL_RSS_LIMIT_KB, result.maxrss_kb


# ------------------------------------------------------------------------------------------ whiteouts


def test_whiteout_names_that_are_not_whiteouts_of_siblings(ws: Workspace) -> None:
    """Outcome: ok or warning. '.wh...' (whiteout of '..') and 'sub/.wh..' must not delete a parent or the
    root; 'sub/.wh..wh..opqX' is not an opaque marker (no prefix match); duplicates: last entry wins.
    (No umoci oracle here: umoci 0.4.7 unpack removes the bundle's rootfs itself on '.wh...'.)"""
    ws.layout(
        [directory("sub/"), file("sub/lower", "lower\n"), file("keep", "keep\n"), file("dup", "first\n")],
        [
            file(".wh...", ""),
            file("sub/.wh..", ""),
            file("sub/.wh..wh..opqX", ""),
            file("sub/.wh.", ""),
            file("dup", "second!\n"),
            file("dup", "third!!!\n"),
        ],
    )
    entries, _ = ls_all(ws, "ok-or-warning")
    assert "/sub/lower" in entries and "/keep" in entries
    assert entries["/dup"]["size"] == len("third!!!\n") and entries["/dup"]["layer"] == 1


def test_opaque_root_and_whiteout_then_readd_in_one_layer(ws: Workspace) -> None:
    """Outcome: ok. An opaque marker at the root hides every lower entry but keeps its own layer's; a
    whiteout and a re-add of the same path in one layer leave the new entry, in either order."""
    ws.layout(
        [directory("old/"), file("old/x", "x\n"), file("f", "lower\n"), file("g", "lower\n")],
        [file("new", "n\n"), file(".wh..wh..opq", ""), file("f", "upper!\n")],
    )
    entries, _ = ls_all(ws, "ok")
    assert sorted(entries) == ["/f", "/new"]
    assert entries["/f"]["layer"] == 1 and entries["/f"]["size"] == len("upper!\n")


def _semantics_cases() -> dict[str, list[list[Member]]]:
    """Crafted layer stacks whose merged tree is whatever `umoci unpack` makes of them (tar order: an
    entry is applied when it is read; whiteouts and opaque markers hide lower layers only)."""
    d, f, s, h = directory, file, symlink, hardlink
    return {
        "hardlink-then-whiteout-of-its-lower-target": [[f("x", "hello\n")], [h("y", "x"), f(".wh.x")]],
        "hardlink-chain-then-whiteouts": [
            [f("x", "abc"), h("y", "x")],
            [h("z", "y"), f(".wh.y"), f(".wh.x")],
        ],
        "hardlink-then-target-overwritten-same-layer": [[f("x", "first"), h("y", "x"), f("x", "second!!")]],
        "hardlink-then-target-overwritten-next-layer": [[f("x", "first")], [h("y", "x"), f("x", "second!!")]],
        "hardlink-to-symlink": [[s("l", "target"), h("h", "l")]],
        "hardlink-to-hardlink": [[f("x", "abc"), h("y", "x"), h("z", "y")]],
        "hardlink-chain-across-layers": [[f("x", "abc")], [h("y", "x")], [h("z", "y"), f(".wh.x")]],
        "opaque-then-new-entries": [[d("d/"), f("d/a", "a")], [f("d/.wh..wh..opq"), f("d/b", "b")]],
        "opaque-in-a-later-layer": [[d("d/"), f("d/a", "a")], [f("d/b", "b")], [f("d/.wh..wh..opq")]],
        "opaque-and-whiteout-of-the-dir": [
            [d("d/"), f("d/a", "a")],
            [f("d/.wh..wh..opq"), f("d/b", "b"), f(".wh.d")],
        ],
        "opaque-of-a-new-dir": [[f("x", "abc")], [f("newdir/.wh..wh..opq"), f("newdir/f", "f")]],
        "readd-before-whiteout-of-parent": [[d("d/"), f("d/a", "a")], [f("d/new", "n"), f(".wh.d")]],
        "whiteout-then-readd-dir": [[d("d/"), f("d/a", "a")], [f(".wh.d"), d("d/"), f("d/b", "b")]],
        "whiteout-through-a-symlink": [[d("t/"), f("t/x", "x"), s("d", "t")], [f("d/.wh.x")]],
        "whiteout-of-missing": [[f("x", "abc")], [f(".wh.nothere"), f("d/.wh.nothere")]],
        "dir-replaced-by-file": [[d("d/"), f("d/a", "a")], [f("d", "now a file")]],
        "file-replaced-by-dir": [[f("d", "file")], [d("d/"), f("d/a", "a")]],
        "symlink-replaced-by-dir": [[d("t/"), f("t/x", "x"), s("d", "t")], [d("d/"), f("d/a", "a")]],
        "dir-then-file-same-layer": [[d("d/"), f("d/a", "a"), f("d", "file")]],
        "file-then-dir-same-layer": [[f("d", "file"), d("d/"), f("d/a", "a")]],
        "dir-mode-change": [[d("d/", 0o755), f("d/a", "a")], [d("d/", 0o700)]],
        "special-bits": [[d("d/", 0o2775), f("f", "x", 0o4755), f("g", "x", 0o7777)]],
        "implicit-parents": [[f("a/b/c/d", "deep")]],
        "dot-slash-duplicates": [[d("./"), d("./etc/"), f("./etc/x", "x"), f("etc/x", "y2")]],
    }


@pytest.mark.parametrize("case", sorted(_semantics_cases()))
def test_crafted_layer_semantics_match_umoci(tmp_path: Path, case: str) -> None:
    """Outcome: the same tree as `umoci unpack` (root only), warnings allowed."""
    if shutil.which("umoci") is None or os.geteuid() != 0:
        pytest.skip("needs umoci and root")
    layers = _semantics_cases()[case]
    w = OciWriter(tmp_path / "image")
    w.add_image([w.add_layer(tar_bytes(members)) for members in layers])
    w.write_index()
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{w.root}:latest", str(bundle)], check=True, capture_output=True
    )
    proc = subprocess.run(
        [sys.executable, "-m", "imgscan", "ls", f"oci-dir:{w.root}", "-R", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert tree_differences(host_tree(str(bundle / "rootfs")), imgscan_tree(f"oci-dir:{w.root}")) == [], (
        proc.stderr
    )


# ---------------------------------------------------------------------------------- archive containers


def test_oci_archive_with_stray_escaping_members(ws: Workspace) -> None:
    """Outcome: ok or warning. An oci-archive whose outer tar also holds '../' and absolute members: they
    are not part of the image, and are never written anywhere."""
    s = ws.sentinel.name
    ws.layout(some_files())
    archive = ws.base / "image.tar"
    craft.tar_of_dir(
        ws.image,
        archive,
        [
            file(f"{UP}tmp/{s}/stray", "x\n"),
            file(f"/tmp/{s}/abs", "x\n"),
            symlink("blobs/sha256/evil", "/etc/passwd"),
        ],
    )
    entries, _ = ls_all(ws, "ok-or-warning", f"oci-archive:{archive}")
    assert "/data/f0" in entries


@pytest.mark.parametrize("field", ["Layers", "Config"])
def test_docker_archive_paths_escaping_the_archive(ws: Workspace, field: str) -> None:
    """Outcome: error. manifest.json naming a layer or config outside the archive ('../', absolute)."""
    tar = tar_bytes(some_files())
    diff_id = craft.sha256(tar)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = [{"Config": "config.json", "RepoTags": ["x/y:z"], "Layers": ["layer.tar"]}]
    if field == "Layers":
        manifest[0]["Layers"] = [f"{UP}etc/passwd"]
    else:
        manifest[0]["Config"] = "/etc/passwd"
    archive = ws.base / "docker.tar"
    members = [
        file("manifest.json", json.dumps(manifest)),
        file("config.json", config),
        Member("layer.tar", data=tar),
    ]
    archive.write_bytes(tar_bytes(members))
    expect(ws.run("ls", f"docker-archive:{archive}", "-R", "--json"), "error")


# ------------------------------------------------------------------------------------------- resources


@pytest.mark.slow
def test_a_million_tiny_entries(ws: Workspace) -> None:
    """Outcome: ok within 300 s and 1.5 GB peak RSS, or a clean one-line limit error. The layer (1,000,000
    empty files in 1,000 directories, ~10 MB gzip) is streamed to disk, never held in memory."""
    w = ws.writer()
    w.add_image([w.add_layer_stream(craft.many_files_tar(1_000_000), "gzip")])
    w.write_index()
    result = ws.run("ls", ws.ref(), "-R", timeout=600)
    outcome = expect_error_or_ok(result)
    assert result.seconds < 300, f"{result.seconds:.0f} s"
    assert result.maxrss_kb < RSS_LIMIT_KB, f"peak RSS {result.maxrss_kb} kB"
    if outcome == "ok":
        with open(result.stdout_path, "rb") as f:
            lines = sum(1 for _ in f)
        assert lines == 1_001_000, lines
    print(f"1M entries: exit {result.returncode}, {result.seconds:.1f} s, {result.maxrss_kb // 1024} MB")


@pytest.mark.slow
def test_a_layer_inflating_a_thousand_to_one(ws: Workspace) -> None:
    """Outcome: ok or a clean limit error, within 120 s and 1 GB peak RSS: 2 GiB of zeros in ~2 MB of gzip
    (one file of 2 GiB), streamed."""
    w = ws.writer()
    chunks, diff_id = craft.gzip_bomb_zeros("zeros", 2 * GIB)
    layer = w.add_precompressed_layer(chunks, diff_id, "gzip")
    assert layer.size < 4 << 20
    w.add_image([layer])
    w.write_index()
    result = ws.run("ls", ws.ref(), "-R", "--json", timeout=300)
    outcome = expect_error_or_ok(result)
    assert result.seconds < 120, f"{result.seconds:.0f} s"
    assert result.maxrss_kb < SMALL_RSS_LIMIT_KB, f"peak RSS {result.maxrss_kb} kB"
    if outcome == "ok":
        assert result.entries()["/zeros"]["size"] == 2 * GIB
    print(f"bomb: exit {result.returncode}, {result.seconds:.1f} s, {result.maxrss_kb // 1024} MB")
