"""Images pulled through the OCI distribution API: 'registry:HOST[:PORT]/REPO[:TAG|@sha256:...]'.

Manifests and configs are fetched whole and verified by digest; layers become RemoteBlob locations that a
worker process opens as a stream (nothing is stored on disk), checked by the layer pipeline's blob digest
and diff_id.
https with verified TLS by default (SSL_CERT_FILE names a private CA); insecure (--insecure) uses plain
http. Anonymous, Basic and Bearer-token auth; credentials from the docker config as the docker CLI finds them
(credHelpers, credsStore, auths); they never appear in messages.
Requests are retried on 429 (Retry-After), 5xx and dropped connections; blobs resume with Range requests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
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
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-\d+/(?:\d+|\*)$")
_HELPER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOKEN_USER = "<token>"  # docker's username for an identity token from a credential helper
HELPER_TIMEOUT = 10.0


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


@dataclass(frozen=True)
class Credentials:
    """A user and secret for one registry host. With identity_token (docker's user '<token>' from a helper,
    or an auths entry's 'identitytoken') the secret is an OAuth2 refresh token for the Bearer realm, as the
    docker CLI uses it. repr() leaves the secret out, so no message or traceback can carry it."""

    user: str
    secret: str = field(repr=False)
    identity_token: bool = False


# (config file, host) -> (credentials or None, where they came from or why there are none). Per process:
# each worker that opens a blob asks for the same host, and a credential helper runs once.
_CREDENTIALS: dict[tuple[str, str], tuple[Credentials | None, str]] = {}


def _docker_config_path() -> str:
    return os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")


def docker_credentials(host: str) -> tuple[Credentials | None, str]:
    """Credentials for host as the docker CLI picks them: the helper named in credHelpers[host], else the
    credsStore helper, else the 'auths' entry. A configured helper is the only store asked, as in docker:
    when it has nothing, fails or times out there are no credentials. The text says where they came from
    or why there are none, for error messages; it never holds a secret."""
    path = _docker_config_path()
    key = (path, host)
    if key not in _CREDENTIALS:
        try:
            with open(path, "rb") as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = {}
        if not isinstance(config, dict):
            config = {}
        helpers = config.get("credHelpers")
        helper = helpers.get(host) if isinstance(helpers, dict) else None
        helper = helper or config.get("credsStore")
        if isinstance(helper, str) and helper:
            _CREDENTIALS[key] = _helper_credentials(helper, host)
        else:
            _CREDENTIALS[key] = _auths_credentials(config.get("auths"), host)
    return _CREDENTIALS[key]


def _auths_credentials(auths: Any, host: str) -> tuple[Credentials | None, str]:
    """The docker config's 'auths' entry for host: base64 'user:password' in 'auth', or 'identitytoken'."""
    none = f"no credentials for {host} in docker config"
    if not isinstance(auths, dict):
        return None, none
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            return Credentials("", entry["identitytoken"], identity_token=True), "docker config auths"
        if isinstance(entry.get("auth"), str):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, f"docker config auths entry for {host} is not base64 'user:password'"
            if sep:
                return Credentials(user, password), "docker config auths"
    return None, none


def _helper_credentials(name: str, host: str) -> tuple[Credentials | None, str]:
    """Run 'docker-credential-NAME get' with host on stdin, as docker does; its answer is JSON with
    Username and Secret. Its output is never quoted (it may hold the secret)."""
    program = f"docker-credential-{name}"
    if not _HELPER_NAME_RE.match(name):
        return None, f"invalid credential helper name {name!r} in docker config"
    path = shutil.which(program)
    if path is None:
        return None, f"credential helper {program} not found on PATH"
    try:
        proc = subprocess.Popen(
            [path, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a timeout kills the helper and anything it started
        )
    except OSError as e:
        return None, f"credential helper {program} cannot run ({e.strerror or type(e).__name__})"
    with proc:
        try:
            out, _ = proc.communicate(host.encode(), timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, f"credential helper {program} timed out after {HELPER_TIMEOUT:g} s"
    if proc.returncode != 0:
        if b"credentials not found" in out:
            return None, f"credential helper {program} has no credentials for {host}"
        return None, f"credential helper {program} failed (exit {proc.returncode})"
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, TypeError, KeyError):
        return None, f"credential helper {program} answered no Username and Secret"
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None, f"credential helper {program} answered no Username and Secret"
    if user == _TOKEN_USER:
        return Credentials("", secret, identity_token=True), f"credential helper {program}"
    return Credentials(user, secret), f"credential helper {program}"


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


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = (resp.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


class RegistryClient:
    """One repository on one registry: requests with auth challenges, retries and one-line errors."""

    def __init__(self, host: str, repo: str, insecure: bool) -> None:
        self.host = host
        self.repo = repo
        self.base = f"{'http' if insecure else 'https'}://{host}"
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
        delay = 0.5
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
                if isinstance(reason, ssl.SSLCertVerificationError):  # does not heal by retrying
                    raise ImgscanError(
                        f"{self.where}: {what}: TLS certificate of {_origin(url)} not trusted ({reason}); "
                        "SSL_CERT_FILE names a CA bundle to trust, --insecure means plain http"
                    ) from None
                if last or isinstance(reason, ssl.SSLError):
                    raise ImgscanError(
                        f"{self.where}: {what}: cannot connect to {_origin(url)} ({reason})"
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
            time.sleep(0.5 * 2**attempt)
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
                time.sleep(0.5 * 2**attempt)
        raise ImgscanError(
            f"{self._client.where}: {self._what}: transfer ended at {self._pos} of {self._size} bytes"
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
