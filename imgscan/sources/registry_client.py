"""HTTP to one repository of a registry (OCI distribution API): auth challenges answered with the
credentials docker would use, retries on 429 (Retry-After), 5xx and dropped connections, one-line errors;
and blobs as picklable RemoteBlob locations a worker process streams, resuming with Range requests.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from imgscan.errors import ImgscanError
from imgscan.sources.blobs import MAX_JSON_BYTES
from imgscan.sources.credentials import DOCKER_HUB_HOSTS, Credentials, docker_credentials

TIMEOUT = 60.0
ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0
_CHUNK = 1 << 20
DOCKER_HUB_API = "registry-1.docker.io"  # docker.io names Docker Hub; its distribution API lives here
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-\d+/(?:\d+|\*)$")


class _NoRedirectAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob storage) without carrying the registry's Authorization header along."""


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.user}:{creds.secret}".encode()).decode()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _error_codes(body: bytes) -> str:
    """'MANIFEST_UNKNOWN (manifest unknown)' from a distribution error body, or ''."""
    try:
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '?')} ({e.get('message', '')})" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return ""
    return ", ".join(parts)


def _backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt 0, 1, 2...: 0.5, 1, 2, 4 (every retry loop here)."""
    return 0.5 * 2**attempt


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = (resp.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


class RegistryClient:
    """One repository on one registry: requests with auth challenges, retries and one-line errors."""

    def __init__(self, host: str, repo: str, insecure: bool) -> None:
        self.host = host
        self.repo = repo
        api_host = DOCKER_HUB_API if host in DOCKER_HUB_HOSTS else host
        self.base = f"{'http' if insecure else 'https'}://{api_host}"
        self._auth: str | None = None
        self._source = ""  # where the credentials in use came from, for messages
        self._opener = urllib.request.build_opener(_NoRedirectAuth())

    @property
    def where(self) -> str:
        return f"registry {self.host}/{self.repo}"

    def _send(
        self,
        url: str,
        method: str,
        headers: dict[str, str],
        what: str,
        auth: str | None = None,
        data: bytes | None = None,
    ) -> http.client.HTTPResponse:
        """One request with retries on 429 (Retry-After), 5xx and dropped connections; HTTP errors raised
        as urllib.error.HTTPError for the caller, everything else as ImgscanError. auth goes to url's
        host only, never along a redirect."""
        for attempt in range(ATTEMPTS):
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            if auth:
                req.add_unredirected_header("Authorization", auth)
            last = attempt == ATTEMPTS - 1
            try:
                return self._opener.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    if last:
                        raise
                    wait = _backoff(attempt)
                    retry_after = e.headers.get("Retry-After", "")
                    if retry_after.strip().isdigit():
                        wait = min(float(retry_after), MAX_RETRY_AFTER)
                    e.close()
                    time.sleep(wait)
                    continue
                raise
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, ssl.SSLCertVerificationError):  # does not heal by retrying
                    raise ImgscanError(
                        f"{self.where}: {what}: TLS certificate of {_origin(url)} not trusted ({reason}); "
                        "SSL_CERT_FILE names a CA bundle to trust, --insecure means plain http"
                    ) from None
                if last or isinstance(reason, ssl.SSLError):
                    raise ImgscanError(
                        f"{self.where}: {what}: cannot connect to {_origin(url)} ({reason})"
                    ) from None
                time.sleep(_backoff(attempt))
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
                return self._send(url, method, hdrs, what, self._auth)
            except urllib.error.HTTPError as e:
                body = b"" if method == "HEAD" else e.read(64 << 10)
                challenge = e.headers.get("WWW-Authenticate", "")
                e.close()
                if e.code == 401 and tries == 0 and challenge:
                    self._authenticate(challenge)
                    continue
                codes = _error_codes(body)
                used = f" with credentials from {self._source}" if e.code == 401 and self._source else ""
                raise ImgscanError(
                    f"{self.where}: {what}: HTTP {e.code}" + (f" {codes}" if codes else "") + used
                ) from None
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str) -> None:
        """Answer a Basic or Bearer challenge with the docker config's credentials for the host (a Bearer
        token from the realm: GET with Basic credentials, or an OAuth2 refresh-token POST for an identity
        token, as the docker CLI does)."""
        scheme = challenge.split(None, 1)[0].lower()
        creds, source = docker_credentials(self.host)
        if scheme == "basic":
            if creds is None or creds.identity_token:
                why = source if creds is None else f"{source} gave an identity token, not Basic credentials"
                raise ImgscanError(f"{self.where}: UNAUTHORIZED ({why})")
            self._auth, self._source = _basic(creds), source
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
        what = "token request"
        try:
            if creds is not None and creds.identity_token:
                form = {**query, "grant_type": "refresh_token", "refresh_token": creds.secret}
                form["client_id"] = "imgscan"
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                body = urllib.parse.urlencode(form).encode()
                resp = self._send(realm, "POST", headers, what, data=body)
            else:
                url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
                resp = self._send(url, "GET", {}, what, _basic(creds) if creds else None)
            with resp:
                data = json.loads(resp.read(MAX_JSON_BYTES))
        except urllib.error.HTTPError as e:
            e.close()
            why = f" with credentials from {source}" if creds is not None else f" ({source})"
            raise ImgscanError(f"{self.where}: token request refused: HTTP {e.code}{why}") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise ImgscanError(f"{self.where}: token request failed ({type(e).__name__})") from None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ImgscanError(f"{self.where}: token response has no token")
        self._auth, self._source = f"Bearer {token}", source if creds is not None else ""

    def fetch(
        self, path: str, digest: str | None, what: str, headers: dict[str, str] | None = None
    ) -> tuple[bytes, http.client.HTTPResponse]:
        """A small document read whole (size-limited; a body cut short is fetched again); sha256 checked
        against digest when given."""
        data = b""
        for attempt in range(ATTEMPTS):
            with self.request(path, headers=headers, what=what) as resp:
                try:
                    data = resp.read(MAX_JSON_BYTES + 1)
                    length = _content_length(resp)
                    whole = length is None or len(data) >= min(length, MAX_JSON_BYTES + 1)
                except (OSError, http.client.HTTPException):
                    whole = False  # http.client reads a short Content-Length body silently, chunked raises
            if whole:
                break
            if attempt == ATTEMPTS - 1:
                raise ImgscanError(f"{self.where}: {what}: connection dropped {ATTEMPTS} times")
            time.sleep(_backoff(attempt))
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
    """Bytes of one blob as they arrive; a connection that drops (a short body, a reset, an incomplete
    chunk) is resumed with a Range request from the first byte not yet handed out. The answer is checked
    to start there: a 206 by its Content-Range, a 200 (Range ignored) from byte 0; bytes before the
    position are skipped, a range that starts after it is an error. The layer pipeline checks the digest."""

    def __init__(self, client: RegistryClient, digest: str, size: int) -> None:
        self._client = client
        self._digest = digest
        self._size = size
        self._pos = 0
        self._resp: http.client.HTTPResponse | None = None
        self._connect()

    def readable(self) -> bool:
        return True

    @property
    def _what(self) -> str:
        return f"blob {self._digest}"

    def _connect(self) -> None:
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        resp = self._client.request(f"blobs/{self._digest}", headers=headers, what=self._what)
        try:
            start = 0
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                m = _CONTENT_RANGE_RE.match(content_range)
                start = int(m.group(1)) if m else -1
                if not 0 <= start <= self._pos:
                    raise ImgscanError(
                        f"{self._client.where}: {self._what}: asked for bytes from {self._pos}, "
                        f"the registry answered Content-Range {content_range[:80]!r}"
                    )
            skip = self._pos - start
            while skip:
                chunk = resp.read(min(skip, _CHUNK))
                if not chunk:
                    raise ConnectionError("connection dropped before the resume offset")
                skip -= len(chunk)
        except BaseException:
            resp.close()
            raise
        self._resp = resp

    def readinto(self, buf: Any) -> int:
        want = min(len(buf), self._size - self._pos)
        if want <= 0:
            return 0
        for attempt in range(ATTEMPTS):
            try:
                if self._resp is None:
                    self._connect()
                assert self._resp is not None
                got = self._resp.readinto(memoryview(buf)[:want])  # 0: the body ended short
            except (OSError, http.client.HTTPException):
                got = 0
            if got:
                self._pos += got
                return got
            if self._resp is not None:
                self._resp.close()
                self._resp = None
            if attempt < ATTEMPTS - 1:
                time.sleep(_backoff(attempt))
        raise ImgscanError(
            f"{self._client.where}: {self._what}: transfer ended at {self._pos} of {self._size} bytes"
        )

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        super().close()
