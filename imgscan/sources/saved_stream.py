"""A saved archive (docker save's output) read in one forward pass, as it arrives from a daemon.

Which members are layers, and in what order, is known only from manifest.json, which docker writes after
the layers (and legacy saves order the layer directories by name, not by position). So the pass keeps
small members (manifests, configs: JSON) in memory and indexes every larger member as a layer while it
streams by; at the end manifest.json picks the image's layers from those indexes and checks them against
the config's diff_ids. Nothing is written to disk and no layer is held in memory, only its index.
"""

from __future__ import annotations

import copy
import io
from typing import BinaryIO

from imgscan.errors import ImgscanError
from imgscan.layers.index import LayerIndex, Limits, relabel
from imgscan.layers.names import clean_path
from imgscan.layers.tarparse import FILE_TYPES, MemberData, TarMember, TarReader
from imgscan.layers.tarstream import index_tar
from imgscan.sources.blobs import MAX_JSON_BYTES, follow_links
from imgscan.sources.docker_archive import SavedImage, hex_in_name, read_saved_image, saved_layer
from imgscan.sources.image import LayerRef

SMALL_MEMBER = 64 << 10  # below this a member is kept whatever it holds (VERSION, v1 json, tiny layers)
MAX_KEPT_BYTES = 64 << 20  # all kept members together


def _named_digest(name: str) -> str | None:
    """The digest a member's name claims for its bytes (blobs/sha256/<hex>, skopeo's <hex>.tar): checked
    as the member is read, as a layout's blob would be."""
    named = hex_in_name(name)
    return f"sha256:{named}" if named else None


class _Pass:
    """What one pass keeps: every member's header, small members' bytes, and for each larger member its
    layer index or the error that showed it is not a layer (raised only if manifest.json needs it)."""

    def __init__(self, where: str, limits: Limits) -> None:
        self.where = where
        self.limits = limits
        self.members: dict[str, TarMember] = {}
        self.kept: dict[str, bytes] = {}
        self.indexed: dict[str, LayerIndex] = {}
        self.failed: dict[str, str] = {}
        self._used: set[str] = set()
        self._kept_bytes = 0

    def read(self, raw: BinaryIO) -> None:
        """The whole pass; any failure of the stream itself (cut short, not a tar) names the source."""
        reader = TarReader(raw)
        try:
            for member in reader:
                name = clean_path(member.name)
                if not name:
                    continue
                if len(self.members) >= self.limits.max_entries:
                    raise ImgscanError(f"more than {self.limits.max_entries} archive members")
                self.members[name] = member
                if member.type in FILE_TYPES:
                    self._take(name, member, reader)
        except ImgscanError as e:
            raise ImgscanError(f"{self.where}: {e}") from None

    def _take(self, name: str, member: TarMember, reader: TarReader) -> None:
        data = io.BufferedReader(MemberData(reader), 1 << 16)
        if member.size <= SMALL_MEMBER or (member.size <= MAX_JSON_BYTES and data.peek(1)[:1] == b"{"):
            self._kept_bytes += member.size
            if self._kept_bytes > MAX_KEPT_BYTES:
                raise ImgscanError(f"more than {MAX_KEPT_BYTES} bytes of metadata members")
            self.kept[name] = data.read()
            return
        try:
            self.indexed[name] = index_tar(data, -1, self.limits, _named_digest(name), None, name)  # type: ignore[arg-type]
        except ImgscanError as e:
            self.failed[name] = str(e)

    def member_bytes(self, name: str) -> bytes:
        target = follow_links(self.members, name)
        if target is None or target not in self.kept:
            why = "missing" if target is None else "too large for a metadata file"
            raise ImgscanError(f"{self.where}: {name} is {why}")
        return self.kept[target]

    def layer_index(self, name: str, label: str) -> tuple[LayerIndex, int]:
        """The index of the member a layer names, and the member's size."""
        target = follow_links(self.members, name)
        if target is None:
            raise ImgscanError(f"{self.where}: {label} ({name}) is missing from the archive")
        if target in self.failed:
            raise ImgscanError(f"{self.where}: {label}: {self.failed[target]}")
        if target in self.kept:
            stream = io.BytesIO(self.kept[target])
            index = index_tar(stream, -1, self.limits, _named_digest(target), None, f"{self.where}: {label}")
        else:
            index = self.indexed[target]
            if target in self._used:  # named twice (docker links identical layers): a copy of its own
                index = copy.deepcopy(index)
            self._used.add(target)
        return index, self.members[target].size


def read_saved_stream(
    raw: BinaryIO, selector: str | None, where: str, limits: Limits
) -> tuple[SavedImage, list[LayerRef]]:
    """The image a saved archive stream holds, with every layer indexed and verified by diff_id."""
    state = _Pass(where, limits)
    state.read(raw)
    saved = read_saved_image(state.member_bytes, selector, where)
    layers = []
    for i, (name, diff_id) in enumerate(zip(saved.layer_names, saved.diff_ids, strict=True)):
        label = f"layer {i}"
        index, size = state.layer_index(name, label)
        if index.diff_id != diff_id:
            raise ImgscanError(
                f"{where}: {label}: diff_id mismatch: config says {diff_id}, uncompressed layer is "
                f"{index.diff_id}"
            )
        layer = saved_layer(i, name, diff_id, size)
        layer.indexed = relabel(index, i)
        layers.append(layer)
    return saved, layers
