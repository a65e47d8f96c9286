"""Images from a Docker daemon: 'docker:NAME[:TAG|@sha256:...]' (or an image ID), through the docker SDK.

The daemon is found as the docker CLI finds it (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH). The
image is resolved to its ID first and saved by that ID, so the archive streamed is exactly the image
named even if a tag moves meanwhile; the stream goes through sources.saved_stream in one pass, never
held in memory or written to disk. The image digest reported is the image ID, as for docker-archives.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from imgscan.errors import ImgscanError
from imgscan.layers.index import Limits
from imgscan.sources.image import Image
from imgscan.sources.oci import format_platform
from imgscan.sources.saved_stream import read_saved_stream

DEFAULT_HOST = "unix:///var/run/docker.sock"
_CHUNK = 1 << 20
_TRANSFER_ERRORS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)


class ChunkStream(io.RawIOBase):
    """A generator of byte chunks (the SDK's save stream) as a readable stream; a transfer error becomes
    one ImgscanError (the reader of the stream names the source)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks, None)
            except _TRANSFER_ERRORS as e:
                raise ImgscanError(f"save stream broke ({_reason(e)})") from None
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _reason(e: BaseException) -> str:
    """The innermost useful words of an SDK error (they nest requests' and urllib3's)."""
    text = str(e.explanation) if isinstance(e, docker.errors.APIError) and e.explanation else str(e)
    return text.strip().splitlines()[-1][:300] if text.strip() else type(e).__name__


def _client(where: str) -> docker.DockerClient:
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    try:
        return docker.from_env(timeout=300)
    except _TRANSFER_ERRORS as e:
        raise ImgscanError(f"{where}: cannot reach the Docker daemon at {host} ({_reason(e)})") from None


def open_docker(name: str, limits: Limits) -> Image:
    """The image the daemon knows by name, its layers indexed from one streamed save."""
    where = f"docker:{name}"
    if not name:
        raise ImgscanError("docker: expected docker:NAME[:TAG|@sha256:...]")
    client = _client(where)
    try:
        try:
            found = client.images.get(name)
        except docker.errors.ImageNotFound:
            raise ImgscanError(f"{where}: no such image in the Docker daemon") from None
        except _TRANSFER_ERRORS as e:
            raise ImgscanError(f"{where}: {_reason(e)}") from None
        image_id = str(found.id)
        try:
            chunks = client.api.get_image(image_id, chunk_size=_CHUNK)
        except _TRANSFER_ERRORS as e:
            raise ImgscanError(f"{where}: save failed ({_reason(e)})") from None
        with ChunkStream(chunks) as stream:
            saved, layers = read_saved_stream(stream, None, where, limits)  # type: ignore[arg-type]
    finally:
        client.close()
    if saved.image_id != image_id:
        raise ImgscanError(f"{where}: the daemon saved {saved.image_id}, not the image {image_id} it named")
    return Image(
        reference=f"docker:{name}@{image_id}" if "@" not in name else f"docker:{name}",
        transport="docker",
        digest=image_id,
        platform=format_platform(saved.config),
        config=saved.config,
        layers=layers,
        tags=list(found.tags),
        metadata={"repo_digests": list(found.attrs.get("RepoDigests") or [])},
    )
