"""Layer indexes kept by diff_id: a LayerIndex depends only on the layer's bytes, so a layer shared by two
images (or seen again in a later run) need not be read twice.

Two tiers: in memory, for the layers a run will need again (the base two images of a diff share), and on
disk, only under a directory the user names (--layer-cache / IMGSCAN_LAYER_CACHE; a scan stores nothing
otherwise). Entries are pickles, so a file is unpickled only when it is ours: owned by this user, with a
header naming the cache format (a hash of the code that shapes a LayerIndex, so a change to it can never
read a stale entry) and the payload's sha256. Anything else is a miss, and the layer is read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from pathlib import Path

from imgscan.layers.index import LayerIndex, Limits, relabel

_MAGIC = b"imgscan-layer-index\n"
# The code whose changes change what a LayerIndex holds for the same bytes.
_SHAPING_SOURCES = (
    "layers/index.py",
    "layers/entry.py",
    "layers/names.py",
    "layers/content.py",
    "layers/tarparse.py",
    "layers/tarstream.py",
    "elf/facts.py",
    "elf/scan.py",
)
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _format_version() -> str:
    digest = hashlib.sha256()
    for name in _SHAPING_SOURCES:
        digest.update(name.encode() + b"\0" + (_PACKAGE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


FORMAT_VERSION = _format_version()


class LayerCache:
    """get() returns a fresh LayerIndex (merging mutates what it is given), put() records one.

    directory: the on-disk tier, or None. shared: diff_ids to keep in memory for a later image of this run.
    """

    def __init__(self, directory: str | None = None, shared: frozenset[str] = frozenset()) -> None:
        self.directory = Path(directory) if directory else None
        self.shared = shared
        self._memory: dict[str, bytes] = {}

    def path(self, diff_id: str) -> Path | None:
        """The file holding diff_id's index (named by the format version too, so versions never collide)."""
        if self.directory is None:
            return None
        return self.directory / f"{diff_id.replace(':', '-')}.{FORMAT_VERSION[:16]}.idx"

    def get(self, diff_id: str, layer: int, limits: Limits) -> LayerIndex | None:
        payload = self._memory.get(diff_id) or self._read(diff_id)
        if payload is None:
            return None
        try:
            index = pickle.loads(payload)
        except Exception:  # our own bytes, checked by digest: only a format bug gets here
            return None
        if (
            not isinstance(index, LayerIndex)
            or index.diff_id != diff_id
            or len(index.entries) > limits.max_entries
            or (index.uncompressed_size or 0) > limits.max_layer_bytes
        ):
            return None  # another layer's index, or one the current limits would refuse: read it again
        return relabel(index, layer)

    def put(self, index: LayerIndex) -> None:
        """Keep index (just read, before any merge) where this cache keeps anything."""
        diff_id = index.diff_id
        target = self.path(diff_id) if diff_id else None
        if diff_id is None or (target is None and diff_id not in self.shared):
            return
        payload = pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
        if diff_id in self.shared:
            self._memory[diff_id] = payload
        if target is not None:
            self._write(target, payload)

    def _read(self, diff_id: str) -> bytes | None:
        path = self.path(diff_id)
        if path is None:
            return None
        header = _MAGIC + FORMAT_VERSION.encode() + b"\n"
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_uid != os.getuid():
                    return None
                data = f.read()
        except OSError:
            return None
        if not data.startswith(header):
            return None
        digest, _, payload = data[len(header) :].partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        return payload

    def _write(self, path: Path, payload: bytes) -> None:
        """Atomically (temp file, then rename): a concurrent reader sees no entry or a whole one. A cache
        that cannot be written is no error: the scan goes on without it."""
        data = _MAGIC + FORMAT_VERSION.encode() + b"\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n"
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data + payload)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
