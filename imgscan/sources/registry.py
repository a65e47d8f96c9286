"""Images pulled through the OCI distribution API: 'registry:HOST[:PORT]/REPO[:TAG|@sha256:...]'.

Manifests and configs are fetched whole and verified by digest; layers become RemoteBlob locations that a
worker process opens as a stream (nothing is stored on disk), checked by the layer pipeline's blob digest
and diff_id.
https with verified TLS by default; insecure (--insecure) uses plain http. Anonymous,
Basic and Bearer-token auth, credentials from the docker config's 'auths'; they never appear in messages.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from imgscan.errors import ImgscanError
from imgscan.sources.blobs import MAX_JSON_BYTES, blob_name, parse_json
from imgscan.sources.image import TAR, Image, LayerRef
from imgscan.sources.oci import INDEX_TYPES, MANIFEST_TYPES, _pick_platform, diff_ids_of, format_platform

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
TIMEOUT = 60.0
ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0
_MAX_INDEX_DEPTH = 4
_CHUNK = 1 << 20
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class RegistryRef:
    host: str
    repo: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"


def parse_registry_ref(text: str) -> RegistryRef:
    """'HOST[:PORT]/REPO[:TAG|@sha256:...]'; the tag defaults to 'latest'."""
    host, slash, rest = text.partition("/")
    if not slash or not host or not rest:
        raise ImgscanError(f"registry:{text}: expected registry:HOST[:PORT]/REPO[:TAG|@sha256:...]")
    digest = tag = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        blob_name(digest)  # a plain sha256 digest or ImgscanError
    else:
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, _, tag = rest.rpartition(":")
            if not _TAG_RE.match(tag):
                raise ImgscanError(f"registry:{text}: invalid tag {tag!r}")
        else:
            tag = "latest"
    if not _REPO_RE.match(rest):
        raise ImgscanError(f"registry:{text}: invalid repository name {rest!r}")
    return RegistryRef(host, rest, tag, digest)


def _docker_config_auth(host: str) -> tuple[str, str] | None:
    """(user, password) for host from the docker config's 'auths' (base64 'auth' field), if any."""
    path = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
    try:
        with open(path, "rb") as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(auths, dict):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"):
        entry = auths.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return (user, password) if sep else None
    return None


class _NoRedirectAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob storage) without carrying the registry's Authorization header along."""


def _basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _error_codes(body: bytes) -> str:
    """'MANIFEST_UNKNOWN (manifest unknown)' from a distribution error body, or ''."""
    try:
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '?')} ({e.get('message', '')})" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return ""
    return ", ".join(parts)


class RegistryClient:
    """One repository on one registry: requests with auth challenges, retries and one-line errors."""

    def __init__(self, host: str, repo: str, insecure: bool) -> None:
        self.host = host
        self.repo = repo
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self._auth: str | None = None
        self._creds = _docker_config_auth(host)
        self._opener = urllib.request.build_opener(_NoRedirectAuth())

    @property
    def where(self) -> str:
        return f"registry {self.host}/{self.repo}"

    def _send(self, url: str, method: str, headers: dict[str, str], what: str) -> http.client.HTTPResponse:
        """One request with retries on 429 (Retry-After), 5xx and dropped connections; HTTP errors raised
        as urllib.error.HTTPError for the caller, everything else as ImgscanError."""
        delay = 0.5
        for attempt in range(ATTEMPTS):
            req = urllib.request.Request(url, method=method, headers=headers)
            if self._auth and url.startswith(self.base):
                req.add_unredirected_header("Authorization", self._auth)
            last = attempt == ATTEMPTS - 1
            try:
                return self._opener.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    if last:
                        raise
                    wait = delay
                    retry_after = e.headers.get("Retry-After", "")
                    if retry_after.strip().isdigit():
                        wait = min(float(retry_after), MAX_RETRY_AFTER)
                    e.close()
                    time.sleep(wait)
                    delay *= 2
                    continue
                raise
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                if last or isinstance(reason, ssl.SSLError):  # TLS failures do not heal by retrying
                    raise ImgscanError(
                        f"{self.where}: {what}: cannot connect to {self.base} ({reason})"
                    ) from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, what: str = ""
    ) -> http.client.HTTPResponse:
        """A request to /v2/<repo>/<path> (or /v2/ for path ''), answering one auth challenge."""
        url = f"{self.base}/v2/{self.repo}/{path}" if path else f"{self.base}/v2/"
        what = what or f"{method} {path or '/v2/'}"
        hdrs = dict(headers or {})
        for tries in range(2):
            try:
                return self._send(url, method, hdrs, what)
            except urllib.error.HTTPError as e:
                body = b"" if method == "HEAD" else e.read(64 << 10)
                challenge = e.headers.get("WWW-Authenticate", "")
                e.close()
                if e.code == 401 and tries == 0 and challenge:
                    self._authenticate(challenge)
                    continue
                codes = _error_codes(body)
                raise ImgscanError(
                    f"{self.where}: {what}: HTTP {e.code}" + (f" {codes}" if codes else "")
                ) from None
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str) -> None:
        scheme = challenge.split(None, 1)[0].lower()
        if scheme == "basic":
            if self._creds is None:
                raise ImgscanError(
                    f"{self.where}: UNAUTHORIZED (no credentials for {self.host} in docker config)"
                )
            self._auth = _basic(self._creds)
            return
        if scheme != "bearer":
            raise ImgscanError(f"{self.where}: unsupported auth scheme {scheme!r}")
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise ImgscanError(f"{self.where}: bearer challenge without a usable realm")
        query = {"scope": params.get("scope") or f"repository:{self.repo}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        if self._creds is not None:
            req.add_unredirected_header("Authorization", _basic(self._creds))
        try:
            with self._opener.open(req, timeout=TIMEOUT) as resp:
                data = json.loads(resp.read(MAX_JSON_BYTES))
        except urllib.error.HTTPError as e:
            e.close()
            raise ImgscanError(f"{self.where}: token request refused: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            raise ImgscanError(f"{self.where}: token request failed ({type(e).__name__})") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ImgscanError(f"{self.where}: token response has no token")
        self._auth = f"Bearer {token}"

    def fetch(
        self, path: str, digest: str | None, what: str, headers: dict[str, str] | None = None
    ) -> tuple[bytes, http.client.HTTPResponse]:
        """A small document read whole (size-limited); sha256 checked against digest when given."""
        with self.request(path, headers=headers, what=what) as resp:
            try:
                data = resp.read(MAX_JSON_BYTES + 1)
            except (OSError, http.client.HTTPException) as e:
                raise ImgscanError(f"{self.where}: {what}: read error ({type(e).__name__})") from None
        if len(data) > MAX_JSON_BYTES:
            raise ImgscanError(f"{self.where}: {what} is larger than {MAX_JSON_BYTES} bytes")
        if digest is not None:
            got = "sha256:" + hashlib.sha256(data).hexdigest()
            if got != digest:
                raise ImgscanError(f"{self.where}: {what} digest mismatch: expected {digest}, got {got}")
        return data, resp


@dataclass(frozen=True)
class RemoteBlob:
    """A registry blob as plain data, so a worker process can open it; open() streams it (Range resume)."""

    host: str
    repo: str
    digest: str
    size: int
    insecure: bool

    @property
    def path(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"

    def open(self) -> io.RawIOBase:
        return BlobStream(RegistryClient(self.host, self.repo, self.insecure), self.digest, self.size)


class BlobStream(io.RawIOBase):
    """Bytes of one blob as they arrive; a connection that drops is resumed with a Range request."""

    def __init__(self, client: RegistryClient, digest: str, size: int) -> None:
        self._client = client
        self._digest = digest
        self._size = size
        self._pos = 0
        self._resp: http.client.HTTPResponse | None = None
        self._connect()

    def readable(self) -> bool:
        return True

    def _connect(self) -> None:
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        resp = self._client.request(f"blobs/{self._digest}", headers=headers, what=f"blob {self._digest}")
        if self._pos and resp.status != 206:
            # no range support: skip what was already read
            skip = self._pos
            while skip:
                chunk = resp.read(min(skip, _CHUNK))
                if not chunk:
                    break
                skip -= len(chunk)
        self._resp = resp

    def readinto(self, buf: Any) -> int:
        want = min(len(buf), self._size - self._pos)
        if want <= 0:
            return 0
        for attempt in range(ATTEMPTS):
            try:
                assert self._resp is not None
                got = self._resp.readinto(memoryview(buf)[:want])
            except (OSError, http.client.HTTPException):
                got = 0
            if got:
                self._pos += got
                return got
            if attempt < ATTEMPTS - 1:
                self._resp.close()
                time.sleep(0.5 * 2**attempt)
                self._connect()
        raise ImgscanError(
            f"{self._client.where}: blob {self._digest}: transfer ended at {self._pos} of {self._size} bytes"
        )

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        super().close()


def _manifest(client: RegistryClient, ref: str) -> tuple[dict[str, Any], str, str]:
    """(manifest or index JSON, its digest, media type), verified against the digest asked for or the one
    the registry reports (Docker-Content-Digest)."""
    asked = ref if ref.startswith("sha256:") else None
    what = f"manifest {ref}"
    data, resp = client.fetch(f"manifests/{ref}", asked, what, {"Accept": ACCEPT})
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    reported = resp.headers.get("Docker-Content-Digest")
    if reported and reported.startswith("sha256:") and reported != got:
        raise ImgscanError(
            f"{client.where}: {what} digest mismatch: registry says {reported}, content is {got}"
        )
    doc = parse_json(data, f"{client.where}: {what}")
    if not isinstance(doc, dict):
        raise ImgscanError(f"{client.where}: {what} is not a JSON object")
    media_type = doc.get("mediaType") or (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    return doc, got, media_type


def open_registry(text: str, platform: str, insecure: bool) -> Image:
    """Resolve 'HOST[:PORT]/REPO[:TAG|@sha256:...]' to a verified Image streaming its layers."""
    ref = parse_registry_ref(text)
    client = RegistryClient(ref.host, ref.repo, insecure)
    with client.request("", what="GET /v2/"):
        pass
    doc, digest, media_type = _manifest(client, ref.digest or ref.tag or "latest")
    for _ in range(_MAX_INDEX_DEPTH):
        if media_type not in INDEX_TYPES:
            break
        desc = _pick_platform(doc, platform, client.where)
        blob_name(desc["digest"])
        doc, digest, media_type = _manifest(client, desc["digest"])
    if media_type not in MANIFEST_TYPES:
        raise ImgscanError(f"{client.where}: {digest} is not an image manifest ({media_type})")
    config_desc = doc.get("config") or {}
    config_digest = config_desc.get("digest", "")
    blob_name(config_digest)
    data, _ = client.fetch(f"blobs/{config_digest}", config_digest, f"config {config_digest}")
    config = parse_json(data, f"{client.where}: config")
    layers = doc.get("layers") or []
    diff_ids = diff_ids_of(config, len(layers), client.where)
    refs = []
    for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        layer_digest = desc.get("digest", "")
        blob_name(layer_digest)
        layer_type = desc.get("mediaType", "")
        if "tar" not in layer_type:
            raise ImgscanError(
                f"{client.where}: layer {i} has media type {layer_type!r}, not a filesystem layer"
            )
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise ImgscanError(f"{client.where}: layer {i} ({layer_digest}) has no valid size")
        blob = RemoteBlob(ref.host, ref.repo, layer_digest, size, insecure)
        refs.append(LayerRef(i, TAR, layer_type, layer_digest, diff_id, size, blob))  # type: ignore[arg-type]
    return Image(
        reference=f"registry:{ref.name}@{digest}",
        transport="registry",
        digest=digest,
        platform=format_platform(config) if isinstance(config, dict) else "unknown",
        config=config,
        layers=refs,
        manifest_media_type=media_type,
        tags=[ref.tag] if ref.tag and not ref.digest else [],
    )
