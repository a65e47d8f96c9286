"""registry: sources against a real CNCF distribution registry (apt docker-registry) on loopback, with
images pushed by skopeo: the listing and CUDA report equal the OCI layout's, by tag and by digest."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgscan.errors import ImgscanError
from imgscan.sources.registry import RemoteBlob, parse_registry_ref
from tests import imagebuild

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci"
DEMO_DIGEST = json.loads((DEMO / "index.json").read_text())["manifests"][0]["digest"]

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs docker-registry and skopeo (apt)",
)


def imgscan(*args: str, insecure_env: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMGSCAN_INSECURE_REGISTRY": "1" if insecure_env else ""}
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(work: Path, data: Path, extra: str = "") -> Iterator[str]:
    """HOST:PORT of a registry with filesystem storage in data, running until the block ends."""
    port = _free_port()
    config = work / f"config-{port}.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {data}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra}"
    )
    log_path = work / f"log-{port}"
    log = open(log_path, "wb")  # noqa: SIM115 - closed after the registry stops
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    host = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # up, asking for credentials
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"docker-registry exited: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


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
    push(f"oci:{DEMO}:demo", f"{registry}/imgscan/demo:v1")
    return f"{registry}/imgscan/demo"


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


def test_cuda_report_equals_layout(demo: str) -> None:
    def report(ref: str) -> dict:
        r = imgscan("cuda", ref, "--json", "--insecure")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        data.pop("reference")
        return data

    assert report(f"registry:{demo}:v1") == report(f"{DEMO}:demo")


def test_multi_layer_image(registry: str, mini_images: imagebuild.ImageSet) -> None:
    layout = mini_images.umoci.path
    dest = f"{registry}/mini:{imagebuild.FINAL_TAG}"
    push(f"oci:{layout}:{imagebuild.FINAL_TAG}", dest)
    local = ls_json(f"{layout}:{imagebuild.FINAL_TAG}")
    remote = ls_json(f"registry:{dest}", "--insecure")
    assert len({e["layer"] for e in remote["entries"]}) > 1
    assert remote["entries"] == local["entries"]
    assert remote["digest"] == local["digest"]


def test_multi_platform_index(registry: str, tmp_path: Path) -> None:
    """An index with amd64 and arm64 entries: --platform picks; a platform it lacks is one line, exit 2."""
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


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {**os.environ, "DOCKER_CONFIG": str(tmp_path), "IMGSCAN_INSECURE_REGISTRY": "1"}


def test_basic_auth_from_docker_config(demo: str, registry_work: Path, tmp_path: Path) -> None:
    """An htpasswd registry over the same storage: creds from DOCKER_CONFIG pull; none or wrong ones give
    one line naming UNAUTHORIZED, and the password never appears."""
    with warnings.catch_warnings():  # crypt is deprecated; only here to write a bcrypt htpasswd line
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    secret = "s3cr3t-pa55"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"user:{crypt.crypt(secret, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    extra = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    local = ls_json(f"{DEMO}:demo")
    with serve(registry_work, registry_work / "data", extra) as host:
        ref = f"registry:{host}/{demo.partition('/')[2]}:v1"
        for password, ok in [(secret, True), ("wrong-pw", False)]:
            env = docker_config(tmp_path, host, "user", password)
            cmd = [sys.executable, "-m", "imgscan", "ls", ref, "-R", "--json"]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            assert secret not in r.stdout + r.stderr
            assert base64.b64encode(f"user:{secret}".encode()).decode() not in r.stderr
            if ok:
                assert r.returncode == 0, r.stderr
                assert json.loads(r.stdout)["entries"] == local["entries"]
            else:
                assert r.returncode == 2 and r.stderr.count("\n") == 1 and "UNAUTHORIZED" in r.stderr
        r = imgscan("ls", ref, "--insecure")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "UNAUTHORIZED" in r.stderr


def test_remote_blob_is_picklable_and_streams(demo: str) -> None:
    manifest = json.loads((DEMO / "blobs" / "sha256" / DEMO_DIGEST.split(":")[1]).read_text())
    layer = manifest["layers"][0]
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
