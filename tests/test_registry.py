"""registry: sources against a real CNCF distribution registry (apt docker-registry) on loopback, with
images pushed by skopeo: the listing and CUDA report equal the OCI layout's, by tag and by digest.

Auth and transport run against real components too: an htpasswd registry (Basic) with credentials from the
docker config (auths, credsStore, credHelpers with real helper executables), the registry's own token auth
with a token server issuing signed JWTs (tests/tokenserver.py), https with a CA made by openssl
(tests/pki.py), and a proxy that drops connections and answers 503/429 (tests/faultproxy.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgscan.errors import ImgscanError
from imgscan.sources import credentials as credentials_mod
from imgscan.sources.registry import parse_registry_ref
from imgscan.sources.registry_client import RegistryClient, RemoteBlob
from tests import imagebuild, pki
from tests.faultproxy import (
    BLOB,
    DROP,
    EARLY_RANGE,
    IGNORE_RANGE,
    LATE_RANGE,
    MANIFEST,
    PING,
    RESET,
    STATUS,
    Fault,
    FaultProxy,
    serve_proxy,
)
from tests.registryserver import serve
from tests.sbomcheck import assert_valid
from tests.tokenserver import TokenServer, serve_tokens

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci"
DEMO_DIGEST = json.loads((DEMO / "index.json").read_text())["manifests"][0]["digest"]
DEMO_MANIFEST = json.loads((DEMO / "blobs" / "sha256" / DEMO_DIGEST.split(":")[1]).read_text())
DEMO_REPO = "imgscan/demo"
USER = "user"
SECRET = "s3cr3t-pa55"
WRONG = "wrong-pa55"
IDENTITY_TOKEN = "identity-t0ken-9f8e7d"
WRONG_TOKEN = "stale-identity-t0ken"

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs docker-registry and skopeo (apt)",
)


def imgscan(
    *args: str, insecure_env: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = env or {**os.environ, "IMGSCAN_INSECURE_REGISTRY": "1" if insecure_env else ""}
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def registry_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def registry(registry_work: Path) -> Iterator[str]:
    """A fresh anonymous registry, stopped after the module."""
    with serve(registry_work, registry_work / "data") as host:
        yield host


def push(src: str, dest: str, *extra: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "-q", *extra, "--dest-tls-verify=false", src, f"docker://{dest}"],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def demo(registry: str) -> str:
    push(f"oci:{DEMO}:demo", f"{registry}/{DEMO_REPO}:v1")
    return f"{registry}/{DEMO_REPO}"


def ls_json(ref: str, *extra: str, insecure_env: bool = False) -> dict:
    r = imgscan("ls", ref, "-R", "--json", *extra, insecure_env=insecure_env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_listing_equals_layout_by_tag_and_digest(demo: str) -> None:
    local = ls_json(f"{DEMO}:demo")
    by_tag = ls_json(f"registry:{demo}:v1", "--insecure")
    by_digest = ls_json(f"registry:{demo}@{DEMO_DIGEST}", insecure_env=True)
    assert local["entries"] and by_tag["entries"] == local["entries"]
    assert by_digest["entries"] == local["entries"]
    assert by_tag["digest"] == by_digest["digest"] == local["digest"] == DEMO_DIGEST
    assert by_tag["reference"] == f"registry:{demo}@{DEMO_DIGEST}"


def test_scan_by_digest_equals_layout_but_for_source_fields(demo: str) -> None:
    """scan --json: the image (config, diff_ids), packages, CUDA report and warnings are the layout's; only
    the source (reference, transport) differs, the manifest and blob digests being the same too."""

    def scan(ref: str) -> dict:
        r = imgscan("scan", ref, "--json", "--insecure")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    remote, local = scan(f"registry:{demo}@{DEMO_DIGEST}"), scan(f"{DEMO}:demo")
    assert remote.pop("source")["layers"] == local.pop("source")["layers"]
    assert remote == local


def test_sbom_names_the_registry_image(demo: str, tmp_path: Path) -> None:
    """The SBOM of a registry: image is valid and names where it came from: pkg:oci with repository_url."""
    out = tmp_path / "sbom.json"
    r = imgscan("sbom", f"registry:{demo}:v1", "-o", str(out), "--insecure")
    assert r.returncode == 0, r.stderr
    assert_valid(out)
    component = json.loads(out.read_text())["metadata"]["component"]
    assert component["purl"] == f"pkg:oci/demo@{DEMO_DIGEST}?arch=amd64&repository_url={demo}&tag=v1"


def test_multi_layer_image(registry: str, mini_images: imagebuild.ImageSet) -> None:
    layout = mini_images.umoci.path
    dest = f"{registry}/mini:{imagebuild.FINAL_TAG}"
    push(f"oci:{layout}:{imagebuild.FINAL_TAG}", dest)
    local = ls_json(f"{layout}:{imagebuild.FINAL_TAG}")
    remote = ls_json(f"registry:{dest}", "--insecure")
    assert len({e["layer"] for e in remote["entries"]}) > 1
    assert remote["entries"] == local["entries"]
    assert remote["digest"] == local["digest"]


def inspect_json(ref: str) -> dict:
    r = imgscan("inspect", ref, "--json", "--insecure")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_docker_v2s2_manifest(registry: str) -> None:
    """The demo pushed as a Docker v2 schema 2 manifest (skopeo --format v2s2): same layers, same tree."""
    push(f"oci:{DEMO}:demo", f"{registry}/v2s2:v1", "--format", "v2s2")
    remote = inspect_json(f"registry:{registry}/v2s2:v1")
    assert remote["manifest_media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert remote["digest"] != DEMO_DIGEST  # another manifest, over the same blobs
    assert [layer["digest"] for layer in remote["layers"]] == [
        layer["digest"] for layer in DEMO_MANIFEST["layers"]
    ]
    assert (
        ls_json(f"registry:{registry}/v2s2:v1", "--insecure")["entries"] == ls_json(f"{DEMO}:demo")["entries"]
    )


def test_multi_platform_index(registry: str, tmp_path: Path) -> None:
    """An index with amd64 and arm64 entries: --platform picks; a platform it lacks is one line, exit 2.
    The same index pushed as a Docker manifest list picks the same way."""
    layout = tmp_path / "oci"
    shutil.copytree(DEMO, layout)
    desc = json.loads((DEMO / "index.json").read_text())["manifests"][0]
    desc.pop("annotations")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**desc, "platform": {"os": "linux", "architecture": "amd64"}},
            {**desc, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }
    data = json.dumps(index).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    top = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": index["mediaType"],
                "digest": f"sha256:{digest}",
                "size": len(data),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(top))
    push(f"oci:{layout}:multi", f"{registry}/multi:latest", "--all")
    local = ls_json(f"{DEMO}:demo")
    assert ls_json(f"registry:{registry}/multi", "--insecure")["entries"] == local["entries"]
    arm = ls_json(f"registry:{registry}/multi@sha256:{digest}", "--insecure", "--platform", "linux/arm64")
    assert arm["entries"] == local["entries"] and arm["digest"] == DEMO_DIGEST
    r = imgscan("ls", f"registry:{registry}/multi", "--insecure", "--platform", "linux/s390x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no image for platform linux/s390x" in r.stderr
    push(f"oci:{layout}:multi", f"{registry}/multi-v2s2:latest", "--all", "--format", "v2s2")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/multi-v2s2:latest"],
        capture_output=True,
        check=True,
    ).stdout
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    listed = inspect_json(f"registry:{registry}/multi-v2s2")
    assert listed["manifest_media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    arm = ls_json(f"registry:{registry}/multi-v2s2", "--insecure", "--platform", "linux/arm64")
    assert arm["entries"] == local["entries"]


def test_unknown_tag_and_repo_are_one_line(demo: str, registry: str) -> None:
    for ref, code in [
        (f"registry:{demo}:nope", "MANIFEST_UNKNOWN"),
        (f"registry:{registry}/nosuch/repo:v1", "NAME_UNKNOWN"),
        (f"registry:{demo}@sha256:{'0' * 64}", "MANIFEST_UNKNOWN"),
    ]:
        r = imgscan("ls", ref, "--insecure")
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert code in r.stderr or "MANIFEST_UNKNOWN" in r.stderr, r.stderr


def test_https_is_the_default_and_fails_in_one_line(demo: str) -> None:
    r = imgscan("ls", f"registry:{demo}:v1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "https://" in r.stderr and "SSL" in r.stderr


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def auths(host: str, password: str) -> dict[str, Any]:
    """A docker config 'auths' section with USER:password for host, as `docker login` writes it."""
    return {host: {"auth": b64(f"{USER}:{password}")}}


def leaked(r: subprocess.CompletedProcess[str], *more: str) -> list[str]:
    """The secrets of these tests (passwords, identity tokens, their Basic encodings, and more: tokens the
    token server issued) that show in r's stdout or stderr."""
    words = [
        SECRET,
        WRONG,
        IDENTITY_TOKEN,
        WRONG_TOKEN,
        *more,
        *(b64(f"{USER}:{w}") for w in (SECRET, WRONG)),
    ]
    return [w for w in words if w in r.stdout + r.stderr]


def one_line_error(r: subprocess.CompletedProcess[str], *texts: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("imgscan: error: ") and r.stderr.count("\n") == 1, r.stderr
    for text in texts:
        assert text in r.stderr, r.stderr


HELPER_SCRIPT = """#!/bin/sh
# a docker credential helper as docker runs it: 'get', the server on stdin, JSON on stdout
[ "$1" = get ] || exit 2
server=$(cat)
printf '%s\\n' "$server" >> "$0.log"
{body}
"""


def write_helper(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(HELPER_SCRIPT.format(body=body))
    path.chmod(0o755)


@pytest.fixture(scope="module")
def helper_bin(registry_work: Path) -> Path:
    """A PATH directory of real credential helper executables: good, wrong, token (identity token) and
    badtoken answer JSON; notfound has nothing, as docker's helpers say it; leaky fails printing the password
    on stdout and stderr (imgscan must not pass it on); slow sleeps past the timeout."""
    bin_dir = registry_work / "bin"
    bin_dir.mkdir()
    answers = {
        "good": (USER, SECRET),
        "wrong": (USER, WRONG),
        "token": ("<token>", IDENTITY_TOKEN),
        "badtoken": ("<token>", WRONG_TOKEN),
    }
    for name, (user, secret) in answers.items():
        answer = {"ServerURL": "", "Username": user, "Secret": secret}
        (bin_dir / f"docker-credential-{name}.json").write_text(json.dumps(answer))
        write_helper(bin_dir, name, 'cat "$0.json"')
    write_helper(bin_dir, "notfound", 'echo "credentials not found in native keychain"; exit 1')
    write_helper(bin_dir, "leaky", f"echo {SECRET}; echo {SECRET} >&2; exit 3")
    write_helper(bin_dir, "slow", 'sleep 30 & echo $! > "$0.pid"; wait')
    return bin_dir


def docker_env(config_dir: Path, config: dict[str, Any], helper_bin: Path, **extra: str) -> dict[str, str]:
    """imgscan's environment: DOCKER_CONFIG holding config, the test helpers first on PATH, plain http."""
    (config_dir / "config.json").write_text(json.dumps(config))
    path = f"{helper_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": path, "IMGSCAN_INSECURE_REGISTRY": "1", **extra}
    return {**os.environ, **env}


@pytest.fixture(scope="module")
def htpasswd(registry_work: Path) -> str:
    """The 'auth:' block of a registry config with USER:SECRET in a bcrypt htpasswd file."""
    with warnings.catch_warnings():  # crypt is deprecated; only here to write a bcrypt htpasswd line
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    path = registry_work / "htpasswd"
    salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)  # cost 4: the registry checks it per request
    path.write_text(f"{USER}:{crypt.crypt(SECRET, salt)}\n")
    return f"auth:\n  htpasswd:\n    realm: test\n    path: {path}\n"


@pytest.fixture(scope="module")
def basic_registry(demo: str, registry_work: Path, htpasswd: str) -> Iterator[str]:
    """HOST:PORT of an htpasswd (Basic auth) registry over the demo's storage, plain http."""
    with serve(registry_work, registry_work / "data", htpasswd) as host:
        yield host


@pytest.fixture(scope="module")
def token_registry(demo: str, registry_work: Path) -> Iterator[tuple[str, TokenServer]]:
    """A registry with token auth over the demo's storage and the token server its challenges name: USER
    with SECRET gets a token by GET, IDENTITY_TOKEN by the refresh-token POST."""
    with (
        serve_tokens(registry_work, {USER: SECRET}, {IDENTITY_TOKEN}) as tokens,
        serve(registry_work, registry_work / "data", tokens.registry_auth()) as host,
    ):
        yield host, tokens


@pytest.fixture(scope="module")
def tls_registry(demo: str, registry_work: Path, htpasswd: str) -> Iterator[tuple[str, pki.ServerTls]]:
    """The htpasswd registry on https, its certificate signed by a CA made for the test."""
    tls = pki.server_tls(registry_work)
    with serve(registry_work, registry_work / "data", htpasswd, tls=tls) as host:
        yield host, tls


@pytest.fixture(scope="module")
def local_entries() -> list[dict[str, Any]]:
    return ls_json(f"{DEMO}:demo")["entries"]


Config = Callable[[str], dict[str, Any]]
# id -> (registry fixture, docker config for its HOST)
CRED_FOUND: dict[str, tuple[str, Config]] = {
    "basic-auths": ("basic_registry", lambda h: {"auths": auths(h, SECRET)}),
    "basic-credhelper-beats-store-and-auths": (
        "basic_registry",
        lambda h: {"credHelpers": {h: "good"}, "credsStore": "wrong", "auths": auths(h, WRONG)},
    ),
    "basic-store-beats-auths": ("basic_registry", lambda h: {"credsStore": "good", "auths": auths(h, WRONG)}),
    "basic-other-hosts-credhelper-unused": (
        "basic_registry",
        lambda h: {"credHelpers": {"registry.example": "wrong"}, "credsStore": "good"},
    ),
    "token-auths": ("token_registry", lambda h: {"auths": auths(h, SECRET)}),
    "token-identity-token": ("token_registry", lambda h: {"credHelpers": {h: "token"}}),
}
# id -> (registry fixture, docker config for its HOST, what the one-line error says)
CRED_FAILS: dict[str, tuple[str, Config, str]] = {
    "basic-credhelper-wrong-password": (
        "basic_registry",
        lambda h: {"credHelpers": {h: "wrong"}, "credsStore": "good", "auths": auths(h, SECRET)},
        "UNAUTHORIZED",
    ),
    "basic-auths-wrong-password": ("basic_registry", lambda h: {"auths": auths(h, WRONG)}, "UNAUTHORIZED"),
    "basic-no-credentials": ("basic_registry", lambda h: {}, "UNAUTHORIZED (no credentials for"),
    "basic-store-has-none": (
        "basic_registry",
        lambda h: {"credsStore": "notfound", "auths": auths(h, SECRET)},
        "docker-credential-notfound has no credentials for",
    ),
    "basic-credhelper-missing": (
        "basic_registry",
        lambda h: {"credHelpers": {h: "nosuch"}},
        "docker-credential-nosuch not found on PATH",
    ),
    "basic-credhelper-fails-printing-the-password": (
        "basic_registry",
        lambda h: {"credHelpers": {h: "leaky"}},
        "docker-credential-leaky failed (exit 3)",
    ),
    "basic-identity-token": ("basic_registry", lambda h: {"credHelpers": {h: "token"}}, "identity token"),
    "token-no-credentials": ("token_registry", lambda h: {}, "token request refused: HTTP 401"),
    "token-wrong-password": (
        "token_registry",
        lambda h: {"auths": auths(h, WRONG)},
        "token request refused: HTTP 401",
    ),
    "token-stale-identity-token": (
        "token_registry",
        lambda h: {"credHelpers": {h: "badtoken"}},
        "token request refused: HTTP 401",
    ),
}


def scan_with_config(
    request: pytest.FixtureRequest, fixture: str, config: Config, config_dir: Path, helper_bin: Path, cmd: str
) -> tuple[subprocess.CompletedProcess[str], str, dict[str, Any], TokenServer | None]:
    """Run `imgscan CMD registry:HOST/demo:v1 --json` (ls with -R) against the named registry fixture with
    config(HOST) as the docker config: (the result, HOST, the config, the token server if any)."""
    served = request.getfixturevalue(fixture)
    host, tokens = served if isinstance(served, tuple) else (served, None)
    doc = config(host)
    env = docker_env(config_dir, doc, helper_bin)
    extra = ["-R"] if cmd == "ls" else []
    return imgscan(cmd, f"registry:{host}/{DEMO_REPO}:v1", *extra, "--json", env=env), host, doc, tokens


@pytest.mark.parametrize("case", CRED_FOUND)
def test_docker_credentials(
    case: str, request: pytest.FixtureRequest, tmp_path: Path, helper_bin: Path, local_entries: list
) -> None:
    """Credentials as the docker CLI finds them (credHelpers[host] > credsStore > auths), over Basic auth
    and the registry's token auth (a GET with Basic credentials, or docker's refresh-token POST for an
    identity token): every layer is read (the worker processes authenticate too)."""
    r, host, config, tokens = scan_with_config(request, *CRED_FOUND[case], tmp_path, helper_bin, "ls")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entries"] == local_entries
    assert not leaked(r, *(tokens.issued if tokens else []))
    helpers = [*config.get("credHelpers", {}).values(), config.get("credsStore")]
    if "good" in helpers:  # it was given the host on stdin, as docker gives it
        assert (helper_bin / "docker-credential-good.log").read_text().splitlines()[-1] == host
    if tokens is not None:
        assert tokens.seen[-1] == (
            ("POST", "refresh_token", True) if "token" in helpers else ("GET", "basic", True)
        )


@pytest.mark.parametrize("case", CRED_FAILS)
def test_failing_auth_is_one_line_without_secrets(
    case: str, request: pytest.FixtureRequest, tmp_path: Path, helper_bin: Path
) -> None:
    """Wrong, missing or unusable credentials (a configured helper is the only store asked, as in docker:
    when it has nothing or fails, auths is not used) give one line saying why, exit 2, and no password,
    identity token or issued token shows, not even one a failing helper printed."""
    fixture, config, error = CRED_FAILS[case]
    r, _, _, tokens = scan_with_config(request, fixture, config, tmp_path, helper_bin, "inspect")
    one_line_error(r, error)
    assert not leaked(r, *(tokens.issued if tokens else []))


def test_credentials_repr_hides_the_secret() -> None:
    creds = credentials_mod.Credentials(USER, SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)


def test_credential_helper_timeout(tmp_path: Path, helper_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper that hangs gives no credentials after HELPER_TIMEOUT (1 s here, 10 s in use), and it is
    killed along with what it started: imgscan neither hangs nor leaves processes behind."""
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "slow"}))
    pid_file = helper_bin / "docker-credential-slow.pid"
    pid_file.unlink(missing_ok=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("PATH", f"{helper_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(credentials_mod, "HELPER_TIMEOUT", 1.0)
    monkeypatch.setattr(credentials_mod, "_CREDENTIALS", {})
    start = time.monotonic()
    creds, why = credentials_mod.docker_credentials("127.0.0.1:1")
    assert creds is None and why == "credential helper docker-credential-slow timed out after 1 s"
    assert time.monotonic() - start < 5

    def running(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")

    pid = int(pid_file.read_text())
    for _ in range(50):
        if not running(pid):
            break
        time.sleep(0.1)
    assert not running(pid), "the helper's child outlived the timeout"


def test_tls_with_a_private_ca(
    tls_registry: tuple[str, pki.ServerTls], tmp_path: Path, helper_bin: Path, local_entries: list
) -> None:
    """https is verified: with SSL_CERT_FILE naming the test CA the htpasswd registry on https is read
    whole; without it the certificate is not trusted: one line, exit 2, and the password never shows."""
    host, tls = tls_registry
    env = docker_env(tmp_path, {"auths": auths(host, SECRET)}, helper_bin, IMGSCAN_INSECURE_REGISTRY="")
    env.pop("SSL_CERT_DIR", None)
    ref = f"registry:{host}/{DEMO_REPO}:v1"
    r = imgscan("ls", ref, "-R", "--json", env={**env, "SSL_CERT_FILE": str(tls.ca)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entries"] == local_entries
    env.pop("SSL_CERT_FILE", None)
    r = imgscan("ls", ref, env=env)
    one_line_error(r, f"https://{host}", "CERTIFICATE_VERIFY_FAILED", "SSL_CERT_FILE")
    assert not leaked(r)


def without_reference(doc: dict[str, Any]) -> dict[str, Any]:
    """An ls or inspect document less its reference (which names the registry's host and port)."""
    return {k: v for k, v in doc.items() if k != "reference"}


@pytest.fixture(scope="module")
def direct(demo: str) -> dict[str, dict[str, Any]]:
    """`ls -R --json` and `inspect --json` straight from the registry, less the reference."""
    out = {}
    for cmd, extra in (("ls", ["-R"]), ("inspect", [])):
        r = imgscan(cmd, f"registry:{demo}:v1", *extra, "--json", "--insecure")
        assert r.returncode == 0, r.stderr
        out[cmd] = without_reference(json.loads(r.stdout))
    return out


def _resumed_each_layer(proxy: FaultProxy) -> None:
    """Every layer blob was asked again from a byte past 0: the dropped transfer resumed, not restarted."""
    for layer in DEMO_MANIFEST["layers"]:
        starts = [int(s.range[6:-1]) for s in proxy.ranges() if layer["digest"] in s.path]
        assert starts and all(0 < n < layer["size"] for n in starts), (layer["digest"], starts)


def _waited_retry_after(proxy: FaultProxy) -> None:
    """Each request answered 429 was sent again no sooner than its Retry-After (1 s)."""
    for i, s in enumerate(proxy.seen):
        if s.fault == STATUS:
            again = next(t for t in proxy.seen[i + 1 :] if (t.method, t.path) == (s.method, s.path))
            assert again.at - s.at >= 0.9


RETRY_AFTER = {"Retry-After": "1"}
# scenario -> (the faults, a check of what the proxy saw)
FAULTS: dict[str, tuple[Callable[[], list[Fault]], Callable[[FaultProxy], None] | None]] = {
    "drop-mid-blob": (lambda: [Fault(DROP, BLOB)], _resumed_each_layer),
    "reset-mid-blob": (lambda: [Fault(RESET, BLOB)], None),
    "503-first-ping-manifest-blob": (
        lambda: [Fault(STATUS, PING), Fault(STATUS, MANIFEST), Fault(STATUS, BLOB)],
        None,
    ),
    "429-retry-after": (
        lambda: [
            Fault(STATUS, MANIFEST, status=429, headers=RETRY_AFTER),
            Fault(STATUS, BLOB, status=429, headers=RETRY_AFTER, per_path=False, times=2),
        ],
        _waited_retry_after,
    ),
    "range-ignored": (
        lambda: [Fault(DROP, BLOB), Fault(IGNORE_RANGE, BLOB, times=None)],
        _resumed_each_layer,
    ),
    "range-from-0": (lambda: [Fault(DROP, BLOB), Fault(EARLY_RANGE, BLOB, times=None)], _resumed_each_layer),
}


@pytest.mark.parametrize("scenario", FAULTS)
def test_faults_heal(scenario: str, registry: str, direct: dict[str, dict[str, Any]]) -> None:
    """Through a proxy that drops or resets a connection mid-blob (the first GET of every blob, config too),
    answers 503 or 429 (Retry-After) first, or mishandles the resume's Range (ignores it: a 200 from byte 0;
    answers a 206 from byte 0), `inspect` and then `ls -R` give what the registry gives directly, and every
    request that failed was asked again. (The faults count per path over both commands: inspect meets the
    manifest and config ones, ls those of the layers.)"""
    faults, check = FAULTS[scenario]
    with serve_proxy(registry, faults()) as proxy:
        for cmd, extra in (("inspect", []), ("ls", ["-R"])):
            r = imgscan(cmd, f"registry:{proxy.host}/{DEMO_REPO}:v1", *extra, "--json", "--insecure")
            assert r.returncode == 0, r.stderr
            assert without_reference(json.loads(r.stdout)) == direct[cmd]
    layers = [layer["digest"] for layer in direct["inspect"]["layers"]]
    assert layers == [layer["digest"] for layer in DEMO_MANIFEST["layers"]]
    failed = [s for s in proxy.seen if s.fault in (STATUS, DROP, RESET)]
    assert failed, "no fault was injected"
    for s in failed:
        assert any(t.path == s.path and t.at > s.at for t in proxy.seen), f"{s.path} was not asked again"
    if check is not None:
        check(proxy)


def test_resume_from_the_wrong_offset_is_an_error(registry: str) -> None:
    """A 206 whose Content-Range starts past the byte asked for would leave a hole in the layer: one line,
    exit 2, rather than bytes glued at the wrong place."""
    faults = [Fault(DROP, BLOB), Fault(LATE_RANGE, BLOB, times=None)]
    with serve_proxy(registry, faults) as proxy:
        r = imgscan("ls", f"registry:{proxy.host}/{DEMO_REPO}:v1", "--insecure")
    one_line_error(r, "asked for bytes from", "Content-Range")


def test_remote_blob_is_picklable_and_streams(demo: str) -> None:
    layer = DEMO_MANIFEST["layers"][0]
    host, _, repo = demo.partition("/")
    blob = pickle.loads(pickle.dumps(RemoteBlob(host, repo, layer["digest"], layer["size"], True)))
    with blob.open() as f:
        data = f.read()
    assert len(data) == layer["size"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]


@pytest.mark.parametrize(
    "text",
    ["localhost:5000", "host/Repo:v1", "host/repo:bad tag", "host/repo@sha256:abc", "/repo:v1"],
)
def test_bad_references(text: str) -> None:
    with pytest.raises(ImgscanError):
        parse_registry_ref(text)


def test_reference_parsing() -> None:
    ref = parse_registry_ref("localhost:5000/a/b-c:1.0")
    assert (ref.host, ref.repo, ref.tag, ref.digest) == ("localhost:5000", "a/b-c", "1.0", None)
    ref = parse_registry_ref("h/a")
    assert ref.tag == "latest"
    digest = "sha256:" + "a" * 64
    ref = parse_registry_ref(f"h:1/a@{digest}")
    assert (ref.repo, ref.tag, ref.digest) == ("a", None, digest)


def test_docker_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docker.io is Docker Hub as the docker CLI means it: official images under library/, the API at
    registry-1.docker.io, credentials filed under https://index.docker.io/v1/ (not reachable offline: the
    names are checked, not a pull)."""
    assert parse_registry_ref("docker.io/python:3.11").repo == "library/python"
    assert parse_registry_ref("docker.io/pytorch/pytorch:2.4").repo == "pytorch/pytorch"
    assert parse_registry_ref("ghcr.io/python:3.11").repo == "python"
    assert RegistryClient("docker.io", "library/python", False).base == "https://registry-1.docker.io"
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64(f"{USER}:{SECRET}")}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setattr(credentials_mod, "_CREDENTIALS", {})
    creds, source = credentials_mod.docker_credentials("docker.io")
    assert creds == credentials_mod.Credentials(USER, SECRET) and source == "docker config auths"
