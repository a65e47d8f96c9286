"""What the layer pass reads from file contents: a few small files whole, and ELF facts from every ELF.

Everything else is skipped unread (or read past, for a stream). Each producer (tar, squashfs, host dir)
calls collect_content() with a reader over the file's bytes, so the rules live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from imgscan.elf.scan import ElfScanner
from imgscan.layers.entry import FILE, Entry
from imgscan.layers.streams import HashThread

ELF_MAGIC = b"\x7fELF"
MIN_ELF_SIZE = 52  # an ELF32 header
CHUNK = 1 << 20

# (pattern over the clean image path, the most bytes kept): small files the analysers parse.
_CAPTURED = [
    (r"etc/ld\.so\.cache", 64 << 20),
    (r"etc/ld\.so\.conf(\.d/[^/]+)?", 1 << 20),
    (r"etc/ld-musl-[^/]+\.path", 1 << 20),
    (r"(usr/)?(etc|lib)/os-release", 1 << 20),
    (r"etc/(debian_version|alpine-release|redhat-release|system-release)", 1 << 20),
    (r"etc/(passwd|group)", 4 << 20),  # the config's User by name: setuid programs' secure mode
    # the dynamic linker itself: its built-in search path is read from it
    (r"(usr/)?lib(64|32|x32)?(/[^/]+)?/ld-(linux[^/]*|musl-[^/]+)\.so[^/]*", 8 << 20),
    # CUDA stack evidence: torch's build facts, NVIDIA's version headers and version.json
    (r".*/torch/version\.py", 1 << 20),
    (r".*/include/(cudnn_version|cudnn_version_v[0-9]+|cublas_api|cuda_runtime_api|nccl)\.h", 4 << 20),
    (r".*cuda[^/]*/version\.(json|txt)", 1 << 20),
    # package databases (imgscan/catalog): dpkg status, distroless status.d, file lists, copyright files
    (r"var/lib/dpkg/status", 64 << 20),
    (r"var/lib/dpkg/(status\.d/[^/]+|info/[^/]+\.list)", 16 << 20),
    (r"usr/share/doc/[^/]+/copyright", 1 << 20),
    (r"lib/apk/db/installed", 64 << 20),
    (r"(var/lib|usr/share|usr/lib/sysimage)/rpm/rpmdb\.sqlite", 128 << 20),
    # python metadata and file lists anywhere (system, venvs, conda envs, /opt): one `.*` keeps it cheap
    # (a distutils egg-info can be a single file)
    (
        r".*((dist|DIST)-(info|INFO)/(METADATA|RECORD)|(egg|EGG)-(info|INFO)/(PKG-INFO|installed-files\.txt)"
        r"|\.egg-info)",
        32 << 20,
    ),
    (r"(.*/)?conda-meta/[^/]+\.json", 64 << 20),
]
_CAPTURE_RE = re.compile("|".join(f"(?:{pattern})" for pattern, _ in _CAPTURED))
_CAPTURE_LIMITS = [(re.compile(pattern), limit) for pattern, limit in _CAPTURED]


def capture_limit(path: str) -> int:
    """How many bytes of path to keep whole (0: not captured)."""
    if not _CAPTURE_RE.fullmatch(path):
        return 0
    return next(limit for pattern, limit in _CAPTURE_LIMITS if pattern.fullmatch(path))


def collect_content(path: str, entry: Entry, read: Callable[[int], bytes]) -> None:
    """Fill entry.content and/or entry.elf from the file's bytes; read(n) returns up to n next bytes."""
    if entry.kind != FILE or entry.size < 4:
        return
    limit = capture_limit(path)
    if limit and entry.size <= limit:
        entry.content = _read_all(read, entry.size)
        head = entry.content[:4]
    else:
        head = read(4)
    if head != ELF_MAGIC or entry.size < MIN_ELF_SIZE:
        return
    scanner = ElfScanner(entry.size)
    digest = HashThread()  # hashed beside the scan: libtorch_cuda.so alone is 479 MB
    for chunk in _chunks(entry.content, head, read):
        scanner.feed(chunk)
        digest.update(chunk)
    entry.elf = scanner.finish()
    entry.sha256 = digest.hexdigest()


def _chunks(content: bytes | None, head: bytes, read: Callable[[int], bytes]) -> Iterator[bytes]:
    """The file's bytes: the captured content, or the head already read followed by the rest."""
    if content is not None:
        yield content
        return
    yield head
    while chunk := read(CHUNK):
        yield chunk


def _read_all(read: Callable[[int], bytes], size: int) -> bytes:
    parts = []
    while size > 0 and (chunk := read(min(size, CHUNK))):
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)
