"""docker: sources against a real dockerd (apt docker.io: vfs storage, no iptables, no bridge, its own
data-root and socket) started for this module; images go in with skopeo, `docker load` and `docker import`.

A scan through the daemon must equal the scan of the same image from its layout or archive in everything
but the source fields, and a layer far larger than the memory limit must stream through."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import imagebuild
from tests.dockerd import available, docker_cli, running_dockerd
from tests.loopback import free_port
from tests.measured import run_imgscan
from tests.sbomcheck import assert_valid

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci"
BIG_FILE_BYTES = 384 << 20
BIG_RSS_LIMIT_KB = 120 << 10

pytestmark = pytest.mark.skipif(
    not (available() and shutil.which("skopeo")),
    reason="needs dockerd and docker (apt docker.io) and skopeo",
)


def imgscan(*args: str, docker_host: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run imgscan with DOCKER_HOST set; returns the result and its peak RSS in kB."""
    env = {**os.environ, "DOCKER_HOST": docker_host}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode, maxrss_kb = run_imgscan(args, env, out, err, 600)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, returncode, out.read().decode(), err.read().decode())
    return result, maxrss_kb


@pytest.fixture(scope="module")
def dockerd_tcp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory, dockerd_tcp_port: int) -> Iterator[str]:
    """The unix-socket DOCKER_HOST of a dockerd that also listens on tcp://127.0.0.1:dockerd_tcp_port."""
    with running_dockerd(tmp_path_factory.mktemp("dockerd"), dockerd_tcp_port) as host:
        yield host


@pytest.fixture(scope="module")
def demo(dockerd: str) -> str:
    imagebuild.skopeo_copy(f"oci:{DEMO}:demo", "docker-daemon:imgscan/demo:v1", "--dest-daemon-host", dockerd)
    return "imgscan/demo:v1"


def scan_json(ref: str, host: str) -> dict:
    result, _ = imgscan("scan", ref, "--json", docker_host=host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_scan_equals_the_oci_layout_but_for_source_fields(dockerd: str, demo: str) -> None:
    local = scan_json(f"{DEMO}:demo", dockerd)
    image_id = docker_cli(dockerd, "image", "inspect", "--format", "{{.Id}}", demo)
    for ref in (f"docker:{demo}", f"docker:{image_id}", f"docker:{image_id[7:19]}"):
        remote = scan_json(ref, dockerd)
        assert remote["source"]["transport"] == "docker"
        assert remote["source"]["digest"] == image_id
        assert remote["source"]["reference"].endswith(f"@{image_id}") or "@" in ref
        assert remote["source"]["tags"] == [demo]
        remote.pop("source")
        assert remote == {k: v for k, v in local.items() if k != "source"}
    # the everyday gate gives the same verdict: the demo's cuDNN pin mismatch is an error
    result, _ = imgscan("scan", f"docker:{demo}", "--fail-on", "error", docker_host=dockerd)
    assert result.returncode == 1 and "cuda.pin-mismatch" in result.stdout


def test_sbom_names_the_daemon_image(dockerd: str, demo: str, tmp_path: Path) -> None:
    """The SBOM of a docker: image is valid and names it as Docker does: pkg:docker, version = image ID."""
    image_id = docker_cli(dockerd, "image", "inspect", "--format", "{{.Id}}", demo)
    out = tmp_path / "sbom.json"
    result, _ = imgscan("sbom", f"docker:{demo}", "-o", str(out), docker_host=dockerd)
    assert result.returncode == 0, result.stderr
    assert_valid(out)
    component = json.loads(out.read_text())["metadata"]["component"]
    assert component["purl"] == f"pkg:docker/imgscan/demo@{image_id}?tag=v1"


def ls_json(ref: str, host: str) -> list[dict]:
    result, _ = imgscan("ls", ref, "-R", "--json", docker_host=host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def test_layers_with_deletions_equal_the_archive(dockerd: str, mini_images: imagebuild.ImageSet) -> None:
    """buildah's image of the mini rootfs (four layers, RUN rm: whiteouts) loaded by `docker load`, then
    read back through the daemon and through the daemon's own `docker save` file. (Docker 20.10 refuses
    to load the umoci image set: a whiteout under a path a lower layer holds as a file.)"""
    archive = mini_images.buildah_docker_archive
    assert archive is not None
    docker_cli(dockerd, "load", "-i", str(archive))
    tag = "localhost/t:latest"
    expected = ls_json(f"docker-archive:{archive}:{tag}", dockerd)
    assert any(e["path"] == "/etc" for e in expected)
    assert ls_json(f"docker:{tag}", dockerd) == expected
    saved = archive.with_suffix(".daemon-save.tar")
    docker_cli(dockerd, "save", "-o", str(saved), tag)
    assert ls_json(f"docker-archive:{saved}", dockerd) == expected


def _random_file_tar(path: Path, size: int) -> None:
    """A rootfs tar holding one file of incompressible bytes, written as it is generated."""
    rng = random.Random(7)

    class Source:
        left = size

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            return rng.randbytes(n)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("data/blob.bin")
        info.size = size
        tf.addfile(info, Source())  # type: ignore[arg-type]


def test_a_large_layer_streams_through_bounded_memory(dockerd: str, tmp_path: Path) -> None:
    """A 384 MiB layer of random bytes: the save stream is read once, the peak RSS stays far below it."""
    rootfs = tmp_path / "big.tar"
    _random_file_tar(rootfs, BIG_FILE_BYTES)
    docker_cli(dockerd, "import", str(rootfs), "imgscan/big:1")
    rootfs.unlink()
    result, rss_kb = imgscan("ls", "docker:imgscan/big:1", "/data/blob.bin", "--json", docker_host=dockerd)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["entries"]
    assert entry["size"] == BIG_FILE_BYTES
    assert rss_kb < BIG_RSS_LIMIT_KB, f"peak RSS {rss_kb // 1024} MB for a {BIG_FILE_BYTES >> 20} MB layer"
    print(f"docker: 384 MiB layer, peak RSS {rss_kb // 1024} MB")


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_unknown_image_is_one_line(dockerd: str) -> None:
    result, _ = imgscan("ls", "docker:imgscan/no-such:image", docker_host=dockerd)
    assert_one_error_line(result, "docker:imgscan/no-such:image", "no such image")


def test_missing_daemon_is_one_line(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/absent.sock"
    result, _ = imgscan("inspect", "docker:imgscan/demo:v1", docker_host=host)
    assert_one_error_line(result, "cannot reach the Docker daemon", host)


@contextlib.contextmanager
def cutting_proxy(upstream_port: int, cut_after: int) -> Iterator[str]:
    """tcp://HOST:PORT of a loopback forwarder to upstream_port that closes a connection once cut_after
    bytes have come back on it: a daemon connection lost in the middle of `docker save`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, budget: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if budget is not None and sent + len(data) > budget:
                    break
                dst.sendall(data)
                sent += len(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, cut_after), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_docker_host_over_tcp(dockerd: str, demo: str, dockerd_tcp_port: int) -> None:
    """DOCKER_HOST names the daemon however it listens: the same listing over tcp as over the socket."""
    assert ls_json(f"docker:{demo}", f"tcp://127.0.0.1:{dockerd_tcp_port}") == ls_json(
        f"docker:{demo}", dockerd
    )


def test_a_save_stream_cut_short_is_one_line(dockerd: str, demo: str, dockerd_tcp_port: int) -> None:
    """The connection dies 2 MB into the 6 MB save stream: one line naming the image, exit 2."""
    with cutting_proxy(dockerd_tcp_port, 2 << 20) as host:
        result, _ = imgscan("ls", f"docker:{demo}", "-R", docker_host=host)
    assert_one_error_line(result, f"docker:{demo}")
