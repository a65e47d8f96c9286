"""Byte streams a layer passes through: digest checking, decompression (gzip, zstd, none), inflate limits.

A layer is read once, front to back. Digests are computed on the way and checked when the stream ends,
so a blob is never stored or read twice.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from typing import Any, BinaryIO

import zstandard

from imgscan.errors import ImgscanError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class HashThread:
    """SHA-256 computed on a thread beside the reader: hashlib releases the GIL on large buffers, so the
    hash of a layer overlaps its decompression and parsing on another core. At most _QUEUED chunks wait."""

    _QUEUED = 8

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self._QUEUED)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()
        self._result: str | None = None

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """The digest of everything given so far; the thread ends (nothing may be added after)."""
        if self._result is None:
            self._queue.put(None)
            self._thread.join()
            self._result = self._hash.hexdigest()
        return self._result


class DigestReader(io.RawIOBase):
    """Passes bytes through while hashing (on a HashThread) and counting them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = HashThread()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._hash.update(bytes(memoryview(buf)[:n]))  # a copy: the caller reuses buf
            self.count += n
        return n or 0

    def close(self) -> None:
        """Stops the hash thread too (a layer that failed half-way leaves no thread behind)."""
        self._hash.hexdigest()
        super().close()

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole stream (tar padding, trailing blocks)."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class GzipReader(io.RawIOBase):
    """Streaming gzip (multi-member) decoder that tells a truncated stream from a complete one.

    Zero padding between or after members is skipped (a gzip member never starts with a zero byte).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._in_member = False
        self._carry = b""
        self._pending = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending and not self._eof:
            self._fill(len(buf))
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _fill(self, want: int) -> None:
        data, self._carry = self._dec.unconsumed_tail or self._carry or self._raw.read(CHUNK), b""
        if not data:
            if self._in_member:
                raise ImgscanError("truncated gzip stream")
            self._eof = True
            return
        if not self._in_member:
            data = data.lstrip(b"\x00")
            if not data:
                return
            self._in_member = True
        try:
            self._pending = self._dec.decompress(data, max(want, CHUNK))
        except zlib.error as e:
            raise ImgscanError(f"corrupt gzip stream ({e})") from None
        if self._dec.eof:
            self._carry = self._dec.unused_data
            self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._in_member = False


class ZstdReader(io.RawIOBase):
    """Streaming zstd decoder over all frames; a stream that stops mid-frame is an error."""

    def __init__(self, raw: BinaryIO) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            return self._reader.readinto(buf)
        except zstandard.ZstdError as e:
            raise ImgscanError(f"corrupt zstd stream ({e})") from None


class PeekReader(io.RawIOBase):
    """Lets the first bytes be examined (compression magic) without consuming them."""

    def __init__(self, raw: BinaryIO, peek_size: int = 8) -> None:
        self._raw = raw
        self._head = raw.read(peek_size)

    def head(self) -> bytes:
        return self._head

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(buf)


class InflateGuard(io.RawIOBase):
    """Stops a decompression bomb: uncompressed bytes may not exceed max_bytes, nor ratio x compressed
    once past floor bytes."""

    def __init__(self, inner: BinaryIO, compressed: DigestReader, max_bytes: int, ratio: int, floor: int):
        self._inner = inner
        self._compressed = compressed
        self._max = max_bytes
        self._ratio = ratio
        self._floor = floor
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._inner.readinto(buf)
        self.count += n or 0
        if self.count > self._max:
            raise ImgscanError(f"layer inflates past {self._max} bytes (raise with --max-layer-bytes)")
        if self.count > self._floor and self.count > self._ratio * max(self._compressed.count, 1):
            raise ImgscanError(
                f"layer inflates more than {self._ratio}:1 (a decompression bomb? raise with --max-ratio)"
            )
        return n or 0


def decompressed(raw: BinaryIO) -> tuple[BinaryIO, str]:
    """Wrap raw in the decoder its magic bytes call for; returns (stream, 'gzip'|'zstd'|'none').

    Magic bytes, not media types, decide: docker-archives and some registries label layers loosely.
    """
    peek = PeekReader(raw)
    head = peek.head()
    if head.startswith(GZIP_MAGIC):
        return GzipReader(peek), "gzip"
    if head.startswith(ZSTD_MAGIC):
        return ZstdReader(peek), "zstd"
    return peek, "none"
