"""The CNCF distribution registry (apt docker-registry) on a free loopback port, filesystem storage, for
the registry: tests and benchmarks/bench_remote.py."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests import pki
from tests.loopback import free_port


@contextlib.contextmanager
def serve(work: Path, data: Path, extra: str = "", tls: pki.ServerTls | None = None) -> Iterator[str]:
    """HOST:PORT of a registry with filesystem storage in data (on https with tls), running until the block
    ends. Readiness is probed over plain http: a TLS port answers that with 400, which is 'up' too."""
    port = free_port()
    config = work / f"config-{port}.yml"
    https = f"  tls:\n    certificate: {tls.cert}\n    key: {tls.key}\n" if tls else ""
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {data}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{https}{extra}"
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
                    raise RuntimeError(f"docker-registry exited: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
