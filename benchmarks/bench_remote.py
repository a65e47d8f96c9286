"""Benchmark: the registry: and docker: sources, beside the same image read locally, and syft on each.

Pushes bench_read.py's torch image (624 MiB gzip, 1.35 GB uncompressed) with skopeo into a loopback
docker-registry and into a dockerd of its own (tests/registryserver.py, tests/dockerd.py), and prints one
markdown table: wall time and peak RSS of `imgscan ls -R` and `syft -o json` through the registry, the
daemon, the OCI layout and the `docker save` file, beside the daemon merely producing its save stream.

    python3 benchmarks/bench_remote.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_read import build_image, single_image_layout
from benchmarks.measure import Measurement, measure, print_table
from tests.dockerd import DOCKER, docker_cli, running_dockerd
from tests.registryserver import serve

TAG = "imgscan/bench:torch"
IMGSCAN = [sys.executable, "-m", "imgscan"]


def _both(label: str, ref: str, syft_ref: str, env: dict[str, str], *options: str) -> dict[str, Measurement]:
    """imgscan ls -R (with options) and, when installed, syft on one source."""
    runs = {f"imgscan ls -R {label}": measure([*IMGSCAN, "ls", ref, "-R", *options], env=env)}
    if shutil.which("syft"):
        runs[f"syft {label} -o json"] = measure(["syft", "-q", syft_ref, "-o", "json"], env=env)
    return runs


def main() -> None:
    ref = build_image()
    layout = ref.removeprefix("oci-dir:").rsplit(":", 1)[0]
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    env = dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE="false", SYFT_REGISTRY_INSECURE_USE_HTTP="true")
    runs: dict[str, Measurement] = {}
    try:
        runs |= _both("oci-dir (local layout)", ref, f"oci-dir:{single_image_layout(ref)}", env)
        with serve(work, work / "registry") as host:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:torch",
                    f"docker://{host}/{TAG}",
                ],
                check=True,
            )
            remote = f"registry:{host}/{TAG}"
            runs |= _both("registry: (loopback, http)", remote, remote, env, "--insecure")
        with running_dockerd(work / "dockerd") as host:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "-q",
                    f"oci:{layout}:torch",
                    f"docker-daemon:{TAG}",
                    "--dest-daemon-host",
                    host,
                ],
                check=True,
            )
            archive = work / "saved.tar"
            docker_cli(host, "save", "-o", str(archive), TAG)
            daemon_env = dict(env, DOCKER_HOST=host)
            runs["docker save > /dev/null (the daemon's stream alone)"] = measure(
                [DOCKER, "-H", host, "save", TAG]
            )
            runs |= _both("docker: (dockerd, vfs)", f"docker:{TAG}", f"docker:{TAG}", daemon_env)
            runs |= _both(
                "docker-archive:FILE (its save)",
                f"docker-archive:{archive}",
                f"docker-archive:{archive}",
                env,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image: {ref}  cores: {os.cpu_count()}")
    print()
    print_table(runs)


if __name__ == "__main__":
    main()
