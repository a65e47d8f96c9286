"""Apptainer/Singularity SIF files: the primary squashfs partition becomes the image's single layer.

The header and descriptors are parsed here with struct (layout in docs/sif.md and sylabs/sif's
pkg/sif): every offset is checked against the file, so a corrupt or hostile SIF fails with one line.
Env and labels come from the SIF's own descriptors; most images keep them only inside the squashfs
(/.singularity.d/), which env_from_script and labels_from_json read once the tree is merged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO

from imgscan.errors import ImgscanError
from imgscan.layers.entry import DIR, FILE
from imgscan.layers.squashfs import Inode, Squashfs
from imgscan.sources.image import SQUASHFS, BlobRegion, Image, LayerRef

MAGIC = b"SIF_MAGIC\x00"
HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")  # launch, magic, version, arch, uuid, ctime .. datalen
DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")  # 585 bytes
PARTITION = struct.Struct("<ii3s")  # start of a partition's 'extra': fstype, parttype, arch
MAX_DESCRIPTORS = 4096  # siftool makes 48; the count is only a header field, so bound the read
MAX_METADATA = 16 << 20  # a deffile, env or labels object is text: refuse to load a huge one

DATA_DEFFILE, DATA_ENV, DATA_LABELS, DATA_PARTITION = 0x4001, 0x4002, 0x4003, 0x4004
DATA_OCI_ROOT_INDEX, DATA_OCI_BLOB = 0x400A, 0x400B
FS_SQUASHFS, PART_PRIMARY = 1, 2
FS_NAMES = {1: "squashfs", 2: "ext3", 3: "immutable object archive", 4: "raw data", 5: "encrypted squashfs"}
# sylabs/sif pkg/sif/arch.go: the codes and the GOARCH (= OCI architecture) names they stand for
ARCHES = {"01": "386", "02": "amd64", "03": "arm", "04": "arm64", "05": "ppc64", "06": "ppc64le",
          "07": "mips", "08": "mipsle", "09": "mips64", "10": "mips64le", "11": "s390x",
          "12": "riscv64"}  # fmt: skip
MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.squashfs"
TRANSPORT = "singularity"


@dataclass(frozen=True)
class Descriptor:
    """One used SIF data object: where it lies and, for partitions, what it holds."""

    datatype: int
    id: int
    offset: int
    size: int
    name: str
    extra: bytes

    def partition(self) -> tuple[int, int, str]:
        """(fstype, parttype, architecture) of a partition object."""
        fstype, parttype, arch = PARTITION.unpack_from(self.extra)
        return fstype, parttype, ARCHES.get(arch.rstrip(b"\x00").decode("ascii", "replace"), "unknown")


def read_descriptors(f: BinaryIO, path: str, file_size: int) -> tuple[tuple[Any, ...], list[Descriptor]]:
    """The global header fields and the used descriptors, each checked to lie inside the file."""
    raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[32:42] != MAGIC:
        raise ImgscanError(f"{path}: not a SIF file (no SIF_MAGIC header)")
    header = HEADER.unpack(raw)
    version, dfree, dtotal, descoff = header[2].rstrip(b"\x00"), header[7], header[8], header[9]
    if version != b"01":
        raise ImgscanError(f"{path}: SIF version {version!r} is not supported (only 01)")
    if not 0 < dtotal <= MAX_DESCRIPTORS or not 0 <= dfree <= dtotal:
        raise ImgscanError(f"{path}: corrupt SIF: {dtotal} descriptors ({dfree} free)")
    if descoff < HEADER.size or descoff + dtotal * DESCRIPTOR.size > file_size:
        raise ImgscanError(f"{path}: corrupt or truncated SIF: the descriptor table lies outside the file")
    f.seek(descoff)
    table = f.read(dtotal * DESCRIPTOR.size)
    descriptors = []
    for i in range(dtotal):
        datatype, used, did, _group, _link, offset, size, *_times, name, extra = DESCRIPTOR.unpack_from(
            table, i * DESCRIPTOR.size
        )
        if not used:
            continue
        if offset < 0 or size < 0 or offset + size > file_size:
            raise ImgscanError(
                f"{path}: corrupt or truncated SIF: data object {did} ({offset}+{size} bytes) "
                f"lies outside the file ({file_size} bytes)"
            )
        text = name.rstrip(b"\x00").decode("utf-8", "replace")
        descriptors.append(Descriptor(datatype, did, offset, size, text, extra))
    return header, descriptors


def _read_object(f: BinaryIO, path: str, d: Descriptor) -> bytes:
    if d.size > MAX_METADATA:
        raise ImgscanError(f"{path}: SIF data object {d.id} ({d.name}) is {d.size} bytes, too big for text")
    f.seek(d.offset)
    return f.read(d.size)


def _primary_partition(path: str, descriptors: list[Descriptor]) -> Descriptor:
    partitions = [d for d in descriptors if d.datatype == DATA_PARTITION]
    primary = [d for d in partitions if d.partition()[1] == PART_PRIMARY]
    if not primary:
        if any(d.datatype in (DATA_OCI_ROOT_INDEX, DATA_OCI_BLOB) for d in descriptors):
            raise ImgscanError(
                f"{path}: this is an OCI-SIF (built with `singularity build --oci`), which imgscan does not "
                "read yet: push it to a registry (`singularity push IMG.sif docker://HOST/NAME:TAG`) and "
                "scan that, or build a native SIF (without --oci)"
            )
        kinds = ", ".join(FS_NAMES.get(d.partition()[0], "unknown") for d in partitions) or "none"
        raise ImgscanError(f"{path}: SIF has no primary system partition (partitions: {kinds})")
    fstype = primary[0].partition()[0]
    if fstype != FS_SQUASHFS:
        raise ImgscanError(
            f"{path}: the SIF's primary partition is {FS_NAMES.get(fstype, f'fstype {fstype}')}; "
            "only squashfs is supported"
        )
    return primary[0]


def sha256_file(path: str) -> str:
    """'sha256:<hex>' of a whole file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return "sha256:" + digest.hexdigest()


def open_sif(path: str, reference: str) -> Image:
    """Resolve a SIF file to an Image with one squashfs layer (the primary system partition)."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            header, descriptors = read_descriptors(f, path, file_size)
            part = _primary_partition(path, descriptors)
            metadata: dict[str, Any] = {"sif_uuid": str(uuid.UUID(bytes=header[4])), "sif_created": header[5]}
            labels: dict[str, str] = {}
            env: list[str] = []
            for d in descriptors:
                if d.datatype == DATA_DEFFILE:
                    metadata["deffile"] = _read_object(f, path, d).decode("utf-8", "replace")
                elif d.datatype == DATA_LABELS:
                    labels.update(labels_from_json(_read_object(f, path, d), f"{path}: labels object {d.id}"))
                elif d.datatype == DATA_ENV:
                    env += env_from_script(_read_object(f, path, d).decode("utf-8", "replace"))
        region = BlobRegion(path, part.offset, part.size)
        if not env or not labels:
            tree_env, tree_labels = _config_in_tree(region)
            env = env or tree_env
            labels = labels or tree_labels
        digest = sha256_file(path)
    except OSError as exc:
        raise ImgscanError(f"{path}: cannot read SIF file: {exc.strerror or exc}") from None
    arch = part.partition()[2]
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env, "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    layer = LayerRef(
        index=0,
        format=SQUASHFS,
        media_type=MEDIA_TYPE,
        digest=None,
        size=part.size,
        region=region,
    )
    return Image(
        reference=reference,
        transport=TRANSPORT,
        digest=digest,
        platform=f"linux/{arch}",
        config=config,
        layers=[layer],
        metadata=metadata,
    )


def _config_in_tree(region: BlobRegion) -> tuple[list[str], dict[str, str]]:
    """Env and labels apptainer keeps inside the image: /.singularity.d/env/*.sh (sourced in name order)
    and /.singularity.d/labels.json. Read in place; absent files give nothing."""
    env: list[str] = []
    labels: dict[str, str] = {}
    with Squashfs(region) as fs:
        try:
            env_dir = fs.lookup(".singularity.d/env")
        except ImgscanError:
            env_dir = None
        if env_dir is not None and env_dir.kind == DIR:
            scripts = sorted((name, ref) for name, ref in fs.listdir(env_dir) if name.endswith(".sh"))
            text = "\n".join(_small_file(fs, fs.inode(ref)) for _, ref in scripts)
            env = env_from_script(text)
        try:
            labels_inode = fs.lookup(".singularity.d/labels.json")
        except ImgscanError:
            labels_inode = None
        if labels_inode is not None and labels_inode.kind == FILE:
            labels = labels_from_json(_small_file(fs, labels_inode).encode(), "/.singularity.d/labels.json")
    return env, labels


def _small_file(fs: Squashfs, inode: Inode, limit: int = 1 << 20) -> str:
    if inode.kind != FILE:
        return ""
    with fs.open(inode) as f:
        return f.read(limit).decode("utf-8", "replace")


def labels_from_json(data: bytes, what: str = "labels") -> dict[str, str]:
    """Labels from a SIF labels object or /.singularity.d/labels.json: a JSON object of strings.

    Non-string values (some builders write numbers) are kept as their JSON text.
    """
    try:
        labels = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImgscanError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(labels, dict):
        raise ImgscanError(f"{what}: expected a JSON object, got {type(labels).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in labels.items()}


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_OPENERS = {"if", "case", "for", "while", "until"}
_CLOSERS = {"fi", "esac", "done", "}"}


class _Unsupported(Exception):
    """A shell construct a static reader must not guess at ($(...), `...`, $1)."""


def env_from_script(text: str) -> list[str]:
    """Environment ['K=V', ...] that a /.singularity.d/env script sets, read statically (never run).

    Pass the scripts concatenated in name order (10-docker2singularity.sh, 90-environment.sh, ...): a
    later assignment wins and may expand an earlier one. Understood: `export K="V"`, `K=V`,
    `export K="${K:-"default"}"` (what apptainer writes for an OCI Env), $K / ${K} / ${K-d} / ${K:-d}
    (an unset variable expands to ''), quotes and backslashes, `unset K`. Assignments inside if/case/
    loops/functions depend on the runtime and are skipped, as are values needing command substitution.
    """
    env: dict[str, str] = {}
    depth = 0
    for line in text.replace("\\\n", " ").splitlines():
        for command, conditional in _split_commands(line):
            words = command.split(None, 1)
            if not words or words[0].startswith("#"):
                break
            first = words[0]
            if first in _OPENERS or command.rstrip().endswith("{"):
                depth += 1
                continue
            if first in _CLOSERS:
                depth = max(0, depth - 1)
                continue
            if first in ("then", "else", "do") and len(words) > 1:
                command, first = words[1], words[1].split()[0]
            if depth or conditional:
                continue
            if first == "unset":
                for name in command.split()[1:]:
                    env.pop(name, None)
                continue
            if first == "export":
                command = command[len("export") :].lstrip()
            match = _ASSIGN.match(command)
            if match:
                try:
                    env[match.group(1)] = _word(command, match.end(), env)[0]
                except _Unsupported:
                    continue
    return [f"{k}={v}" for k, v in env.items()]


def _split_commands(line: str) -> list[tuple[str, bool]]:
    """Split a line at unquoted ';', '&&', '||': (command, runs only if a test passed) pairs."""
    parts, start, quote, cond, i = [], 0, "", False, 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        elif c == ";" or line.startswith(("&&", "||"), i):
            parts.append((line[start:i].strip(), cond))
            cond = c != ";"
            i += 1 if c == ";" else 2
            start = i
            continue
        i += 1
    parts.append((line[start:i].strip(), cond))
    return parts


def _word(s: str, i: int, env: dict[str, str], end: str = "") -> tuple[str, int]:
    """Expand one shell word from s[i:]; stops at unquoted blank, or at `end` inside ${...}."""
    out = []
    while i < len(s):
        c = s[i]
        if (end and c == end) or (not end and c in " \t;&|"):
            break
        if c == "\\":
            out.append(s[i + 1 : i + 2])
            i += 2
        elif c == "'":
            close = s.find("'", i + 1)
            if close < 0:
                raise _Unsupported
            out.append(s[i + 1 : close])
            i = close + 1
        elif c == '"':
            i += 1
            while True:
                if i >= len(s) or s[i] == "`":
                    raise _Unsupported
                c = s[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and s[i + 1 : i + 2] in ("$", "`", '"', "\\"):
                    out.append(s[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _dollar(s, i, env)
                    out.append(value)
                else:
                    out.append(c)
                    i += 1
        elif c == "$":
            value, i = _dollar(s, i, env)
            out.append(value)
        elif c == "`":
            raise _Unsupported
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def _dollar(s: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """Expand $NAME, ${NAME}, ${NAME-word} or ${NAME:-word} at s[i] == '$'."""
    j = i + 1
    if s.startswith("{", j):
        name = _NAME.match(s, j + 1)
        if not name:
            raise _Unsupported
        k = name.end()
        value = env.get(name.group())
        if s.startswith("}", k):
            return value or "", k + 1
        for op in (":-", "-"):
            if s.startswith(op, k):
                default, k = _word(s, k + len(op), env, end="}")
                if not s.startswith("}", k):
                    raise _Unsupported
                if value is None or (op == ":-" and value == ""):
                    value = default
                return value, k + 1
        raise _Unsupported
    name = _NAME.match(s, j)
    if name:
        return env.get(name.group(), ""), name.end()
    if j < len(s) and (s[j] in "(0123456789@*#?$!-"):
        raise _Unsupported
    return "$", j
