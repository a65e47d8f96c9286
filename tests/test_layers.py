"""Layer indexing and merge semantics on tars written by Python's tarfile (the rules, one by one).

Whole-image agreement with umoci/unsquashfs lives in test_real_images.py and test_sif.py; this file pins
each rule so a regression names the rule it broke.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest
import zstandard

from imgscan.errors import ImgscanError
from imgscan.layers.fsview import SymlinkLoop
from imgscan.layers.index import Limits
from imgscan.layers.merge import merge
from imgscan.layers.tarparse import MAX_EXT_HEADER
from imgscan.layers.tarstream import index_tar


def tar_bytes(*members: tuple) -> bytes:
    """members: (name, kind, extra) with kind in file|dir|symlink|hardlink|char|fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, *extra in members:
            ti = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = extra[0] if extra else b""
                ti.size = len(data)
                ti.mode = extra[1] if len(extra) > 1 else 0o644
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra[0]
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra[0]
            elif kind == "char":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def index(data: bytes, layer: int = 0, **kw):
    return index_tar(io.BytesIO(data), layer, Limits(**kw), None, None, f"layer {layer}")


def merged(*layers: bytes):
    fs, warnings = merge([index(data, i) for i, data in enumerate(layers)])
    return fs, warnings


def paths(fs) -> dict[str, str]:
    return {p: e.kind for p, e in fs.walk()}


def test_whiteout_removes_lower_subtree_only():
    base = tar_bytes(("a", "dir"), ("a/b", "dir"), ("a/b/c", "file", b"x"), ("a/d", "file", b"y"))
    upper = tar_bytes(("a/.wh.b", "file"), ("a/b2", "file", b"z"))
    fs, _ = merged(base, upper)
    assert paths(fs) == {"a": "dir", "a/d": "file", "a/b2": "file"}


def test_opaque_dir_hides_lower_but_keeps_same_layer_entries():
    base = tar_bytes(("d", "dir"), ("d/old", "file", b"1"), ("d/sub", "dir"), ("d/sub/x", "file"))
    upper = tar_bytes(("d", "dir"), ("d/.wh..wh..opq", "file"), ("d/new", "file", b"2"))
    fs, _ = merged(base, upper)
    assert paths(fs) == {"d": "dir", "d/new": "file"}
    assert fs.lookup("d/new").layer == 1


def test_opaque_marker_is_not_matched_by_prefix():
    base = tar_bytes(("d", "dir"), ("d/keep", "file"))
    upper = tar_bytes(("d/.wh..wh..opqX", "file"))  # a whiteout of the file '.wh..opqX', not an opaque marker
    fs, _ = merged(base, upper)
    assert "d/keep" in paths(fs)


def test_file_over_dir_drops_subtree_and_dir_over_dir_keeps_children():
    base = tar_bytes(("x", "dir"), ("x/in", "file"), ("y", "dir"), ("y/in", "file"))
    upper = tar_bytes(("x", "file", b"now a file"), ("y", "dir"))
    fs, _ = merged(base, upper)
    assert paths(fs) == {"x": "file", "y": "dir", "y/in": "file"}
    assert fs.lookup("y").layer == 1


def test_deleted_and_readded_path_reports_upper_layer():
    base = tar_bytes(("etc", "dir"), ("etc/conf", "file", b"old"))
    upper = tar_bytes(("etc/.wh.conf", "file"), ("etc/conf", "file", b"new!"))
    fs, _ = merged(base, upper)
    entry = fs.lookup("etc/conf")
    assert (entry.layer, entry.size) == (1, 4)


def test_hardlink_keeps_target_metadata_after_target_is_deleted():
    base = tar_bytes(("bin", "dir"), ("bin/a", "file", b"12345", 0o4755), ("bin/b", "hardlink", "bin/a"))
    upper = tar_bytes(("bin/.wh.a", "file"))
    fs, _ = merged(base, upper)
    b = fs.lookup("bin/b")
    assert (b.kind, b.size, b.mode, b.link_target) == ("hardlink", 5, 0o4755, "bin/a")
    assert fs.lookup("bin/a") is None


def test_hardlink_to_missing_or_escaping_target_is_skipped_with_warning():
    fs, warnings = merged(tar_bytes(("h", "hardlink", "nowhere")))
    assert paths(fs) == {} and any("hardlinks" in w for w in warnings)
    ix = index(tar_bytes(("h2", "hardlink", "../../etc/passwd")))
    assert ix.entries == {} and ix.warnings


def test_escaping_and_absolute_names():
    ix = index(
        tar_bytes(("../../evil", "file"), ("/abs/file", "file"), ("a/../../b", "file"), ("ok", "file"))
    )
    assert set(ix.entries) == {"abs/file", "ok"}
    assert any("escape" in w for w in ix.warnings) and any("absolute" in w for w in ix.warnings)


def test_entries_under_symlinked_parent_land_in_its_target_inside_the_image():
    base = tar_bytes(("real", "dir"), ("evil", "symlink", "/../../real"))
    upper = tar_bytes(("evil/passwd", "file", b"x"))
    fs, _ = merged(base, upper)
    assert fs.lookup("real/passwd").layer == 1
    assert fs.lookup("evil", follow_last=False).kind == "symlink"


def test_resolve_stays_inside_root_and_detects_loops():
    fs, _ = merged(
        tar_bytes(
            ("usr", "dir"),
            ("usr/lib", "dir"),
            ("usr/lib/x", "file"),
            ("lib", "symlink", "usr/lib"),
            ("up", "symlink", "../../../../usr"),
            ("a", "symlink", "b"),
            ("b", "symlink", "a"),
        )
    )
    assert fs.resolve("lib/x") == ("usr/lib/x", fs.lookup("usr/lib/x"))
    assert fs.resolve("up/lib")[0] == "usr/lib"
    with pytest.raises(SymlinkLoop):
        fs.lookup("a")
    assert fs.lookup("a", follow_last=False).kind == "symlink"


def test_device_nodes_and_fifos_are_recorded_not_created():
    fs, _ = merged(tar_bytes(("dev", "dir"), ("dev/null", "char"), ("p", "fifo")))
    assert fs.lookup("dev/null").kind == "char" and fs.lookup("p").kind == "fifo"


def test_digests_are_checked_for_blob_and_diff_id():
    raw = tar_bytes(("f", "file", b"data"))
    gz = gzip.compress(raw)
    good_digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    good_diff = "sha256:" + hashlib.sha256(raw).hexdigest()
    ix = index_tar(io.BytesIO(gz), 0, Limits(), good_digest, good_diff, "layer 0")
    assert ix.diff_id == good_diff and ix.uncompressed_size == len(raw)
    with pytest.raises(ImgscanError, match=r"layer 0.*blob digest mismatch"):
        index_tar(io.BytesIO(gz), 0, Limits(), "sha256:" + "0" * 64, good_diff, "layer 0")
    with pytest.raises(ImgscanError, match="diff_id mismatch"):
        index_tar(io.BytesIO(gz), 0, Limits(), good_digest, "sha256:" + "1" * 64, "layer 0")


@pytest.mark.parametrize("compress", [gzip.compress, lambda b: zstandard.ZstdCompressor().compress(b)])
def test_compressed_layers_and_truncation(compress):
    raw = tar_bytes(*[(f"f{i}", "file", bytes(range(256)) * 40) for i in range(50)])
    blob = compress(raw)
    assert len(index(blob).entries) == 50
    with pytest.raises(ImgscanError, match="layer 0"):
        index(blob[: len(blob) // 2])


def test_multi_member_gzip_is_one_stream():
    raw = tar_bytes(("a", "file", b"1" * 5000), ("b", "file", b"2" * 5000))
    half = len(raw) // 2
    assert set(index(gzip.compress(raw[:half]) + gzip.compress(raw[half:])).entries) == {"a", "b"}


def test_oversized_pax_header_is_refused_before_it_is_read():
    ti_header = tarfile.TarInfo("././@PaxHeader")
    ti_header.type = tarfile.XHDTYPE
    ti_header.size = MAX_EXT_HEADER + 1
    data = ti_header.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 1024
    with pytest.raises(ImgscanError, match="extended header"):
        index(data)


def test_entry_limit_and_inflate_ratio():
    raw = tar_bytes(*[(f"f{i}", "file") for i in range(20)])
    with pytest.raises(ImgscanError, match="more than 10 entries"):
        index(raw, max_entries=10)
    zeros = tar_bytes(("z", "file", b"\0" * 3_000_000))
    with pytest.raises(ImgscanError, match="inflates more than 10:1"):
        index(gzip.compress(zeros), max_inflate_ratio=10, inflate_ratio_floor=1 << 20)


def test_hardlinks_resolve_in_tar_order():
    # the link is read before the same layer deletes its lower target
    fs, _ = merged(tar_bytes(("x", "file", b"lower!")), tar_bytes(("y", "hardlink", "x"), (".wh.x", "file")))
    assert (fs.lookup("y").size, fs.lookup("x")) == (6, None)
    # the target is overwritten later in the same layer: the link keeps the first content
    fs, _ = merged(tar_bytes(("x", "file", b"first"), ("y", "hardlink", "x"), ("x", "file", b"second!!")))
    assert (fs.lookup("y").size, fs.lookup("x").size) == (5, 8)
    # a path first linked to a lower file, then replaced by a link to a file of its own layer
    fs, _ = merged(
        tar_bytes(("x", "file", b"123")),
        tar_bytes(("y", "hardlink", "x"), ("z", "file", b"12345"), ("y", "hardlink", "z")),
    )
    assert fs.lookup("y").size == 5
