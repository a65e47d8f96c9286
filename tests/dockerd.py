"""A dockerd of our own (apt docker.io): vfs storage, no iptables, no bridge, its own data-root, exec-root
and unix socket under a scratch directory, so it touches nothing of the host's and needs no running
engine. Used by the docker: tests and benchmarks/bench_docker.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DOCKER = "/usr/bin/docker"  # the docker.io client that matches the daemon (API 1.41)


def available() -> bool:
    return bool(shutil.which("dockerd")) and os.path.exists(DOCKER)


def docker_cli(host: str, *args: str) -> str:
    """`docker -H host ARGS`, its stdout; a failure raises with docker's stderr."""
    result = subprocess.run([DOCKER, "-H", host, *args], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def running_dockerd(root: Path, tcp_port: int | None = None, start_timeout: float = 60) -> Iterator[str]:
    """DOCKER_HOST (unix socket) of a dockerd living under root until the block ends, also listening on
    tcp://127.0.0.1:tcp_port when given (plain, loopback only); its storage is removed at the end."""
    root.mkdir(parents=True, exist_ok=True)
    host = f"unix://{root / 'docker.sock'}"
    tcp = [f"--host=tcp://127.0.0.1:{tcp_port}"] if tcp_port else []
    log_path = root / "dockerd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [
                "dockerd",
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                f"--data-root={root / 'data'}",
                f"--exec-root={root / 'exec'}",
                f"--pidfile={root / 'dockerd.pid'}",
                f"--host={host}",
                *tcp,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + start_timeout
            while subprocess.run([DOCKER, "-H", host, "version"], capture_output=True).returncode != 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dockerd did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.3)
            yield host
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
            shutil.rmtree(root / "data", ignore_errors=True)
