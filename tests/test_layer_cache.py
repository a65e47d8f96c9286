"""The layer cache (--layer-cache / IMGSCAN_LAYER_CACHE) on the bundled demo: a second run reads from it,
a damaged or foreign entry is ignored and rewritten, a hostile one never crashes, and nothing is stored
unless asked."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from imgscan.layers.cache import FORMAT_VERSION, LayerCache
from imgscan.layers.index import Limits
from imgscan.layers.scan import scan_image
from imgscan.sources.refs import open_image

DEMO_OCI = str(Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci")


def imgscan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def cache_files(directory: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in directory.iterdir()}


@pytest.fixture
def diff_ids() -> list[str]:
    return [ref.diff_id for ref in open_image(DEMO_OCI).layers]


def test_second_run_reads_the_cache(tmp_path: Path, diff_ids: list[str]) -> None:
    cache = tmp_path / "cache"
    first = imgscan("cuda", DEMO_OCI, "--json", "--layer-cache", str(cache))
    assert first.returncode == 0, first.stderr
    written = cache_files(cache)
    assert len(written) == 3 and all(FORMAT_VERSION[:16] in p.name for p in written)
    second = imgscan("cuda", DEMO_OCI, "--json", env={"IMGSCAN_LAYER_CACHE": str(cache)})
    assert second.returncode == 0 and json.loads(second.stdout) == json.loads(first.stdout)
    assert cache_files(cache) == written  # every layer came from the cache: none was rewritten


def test_damaged_entry_is_ignored_and_rewritten(tmp_path: Path, diff_ids: list[str]) -> None:
    cache = LayerCache(str(tmp_path))
    image = open_image(DEMO_OCI)
    reference = scan_image(image, Limits(), cache)
    path = cache.path(diff_ids[1])
    assert path is not None
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # payload no longer matches its sha256
    path.write_bytes(bytes(data))
    assert cache.get(diff_ids[1], 1, Limits()) is None
    again = scan_image(open_image(DEMO_OCI), Limits(), cache)
    assert cache.get(diff_ids[1], 1, Limits()) is not None  # rewritten by the read that replaced it
    assert sorted(p for p, _ in again.fs.walk()) == sorted(p for p, _ in reference.fs.walk())


def test_hostile_entries_never_crash(tmp_path: Path, diff_ids: list[str]) -> None:
    cache = LayerCache(str(tmp_path))
    target = cache.path(diff_ids[0])
    assert target is not None
    evil = pickle.dumps(os.system)  # would run code if unpickled unchecked
    header = b"imgscan-layer-index\n" + FORMAT_VERSION.encode() + b"\n"
    for data in (b"", b"garbage", header + b"0" * 64 + b"\n" + evil, evil, header):
        target.write_bytes(data)
        assert cache.get(diff_ids[0], 0, Limits()) is None
    # a well-formed entry holding another layer's index is refused too
    other = scan_image(open_image(DEMO_OCI), Limits(), LayerCache(str(tmp_path / "o")))
    assert other.layers[1].diff_id == diff_ids[1]
    (tmp_path / "o" / LayerCache(str(tmp_path / "o")).path(diff_ids[1]).name).rename(target)  # type: ignore[union-attr]
    assert cache.get(diff_ids[0], 0, Limits()) is None
    proc = imgscan("ls", DEMO_OCI, "/etc", "--layer-cache", str(tmp_path))
    assert proc.returncode == 0 and proc.stderr == ""


def test_limits_still_apply_to_cached_layers(tmp_path: Path, diff_ids: list[str]) -> None:
    cache = LayerCache(str(tmp_path))
    scan_image(open_image(DEMO_OCI), Limits(), cache)
    assert cache.get(diff_ids[0], 0, Limits(max_entries=5)) is None
    proc = imgscan("ls", DEMO_OCI, "--max-entries", "5", "--layer-cache", str(tmp_path))
    assert proc.returncode == 2 and "more than 5 entries" in proc.stderr


def test_relabelled_at_another_position(tmp_path: Path, diff_ids: list[str]) -> None:
    cache = LayerCache(str(tmp_path))
    scan_image(open_image(DEMO_OCI), Limits(), cache)
    index = cache.get(diff_ids[2], 7, Limits())
    assert index is not None and index.layer == 7 and {e.layer for e in index.entries.values()} == {7}


def test_nothing_stored_unless_asked(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg"), "IMGSCAN_LAYER_CACHE": ""}
    assert imgscan("scan", DEMO_OCI, env=env).returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_diff_shares_layers_without_a_cache() -> None:
    image = open_image(DEMO_OCI)
    shared = frozenset(ref.diff_id for ref in image.layers if ref.diff_id)
    cache = LayerCache(None, shared)
    first = scan_image(image, Limits(), cache)
    assert all(cache.get(d, 0, Limits()) is not None for d in shared)
    second = scan_image(open_image(DEMO_OCI), Limits(), cache)
    assert [p for p, _ in first.fs.walk()] == [p for p, _ in second.fs.walk()]
    assert first.layers[0] is not second.layers[0]  # fresh copies: merging changes what it is given
