"""The CUDA report on the bundled demo image (fixtures/demo: built by umoci, mksquashfs and siftool from
stand-in libraries with torch 2.14.1's real sonames, RPATHs and pins; its cuDNN wheel is deleted by a
later layer and a cuDNN 9.13.0 sits on LD_LIBRARY_PATH). The real-wheel tier is test_cuda_wheels.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo"
SITE = "/usr/local/lib/python3.11/dist-packages"


def imgscan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgscan", *args], capture_output=True, text=True)


@pytest.fixture(scope="module", params=["oci", "demo.sif"])
def report(request: pytest.FixtureRequest) -> dict:
    out = imgscan("cuda", str(DEMO / request.param), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {lib["name"]: lib for lib in report["libraries"]}


def test_torch_is_resolved_in_its_python_process(report: dict) -> None:
    (torch,) = report["torch"]
    assert (torch["version"], torch["cuda"], torch["interpreter"]) == (
        "2.14.1+cu130",
        "13.0",
        "/usr/bin/python3.11",
    )
    assert torch["pins"]["nvidia-cudnn-cu13"] == "9.24.0.43"
    assert torch["pins"]["nvidia-cublas"] == "13.1.1.3.*"  # reached through cuda-toolkit[cublas]


def test_shadowing_cudnn_is_loaded_and_flagged(report: dict) -> None:
    cudnn = by_name(report)["cudnn"]
    assert cudnn["realpath"] == "/usr/local/cuda-13.0/lib64/libcudnn.so.9.13.0"
    assert (cudnn["rule"], cudnn["version"]) == ("ld_library_path", "9.13.0")
    assert {e["source"] for e in cudnn["evidence"]} == {"file-name", "header"}
    assert all(
        by_name(report)[f"cudnn_{sub}"]["version"] == "9.13.0" for sub in ("ops", "cnn", "graph", "adv")
    )
    mismatches = [f for f in report["findings"] if f["id"] == "cuda.pin-mismatch"]
    assert len(mismatches) == 1 and "libcudnn.so.9" in mismatches[0]["message"]


def test_pip_libraries_win_through_torch_rpath(report: dict) -> None:
    libs = by_name(report)
    expected = {"cublas": "13.1.1.3", "nccl": "2.30.7", "cudart": "13.0.96", "cusparseLt": "0.8.1"}
    for name, version in expected.items():
        assert (libs[name]["version"], libs[name]["rule"]) == (version, "rpath"), name
        assert libs[name]["realpath"].startswith(f"{SITE}/nvidia/")
        assert libs[name]["evidence"][0]["source"] == "pip"
        assert libs[name]["owner"].startswith("pkg:pypi/nvidia-")
    assert libs["cudart"]["shadowed"] == ["/usr/local/cuda-13.0/lib64/libcudart.so.13.0.96"]


def test_host_driver_is_expected_not_missing(report: dict) -> None:
    ids = {f["id"] for f in report["findings"]}
    assert "cuda.missing" not in ids
    (host,) = [f for f in report["findings"] if f["id"] == "cuda.host-driver"]
    assert "libcuda.so.1" in host["message"] and "580.65.06" in host["message"]


def test_fail_on_and_markdown() -> None:
    ref = str(DEMO / "oci")
    assert imgscan("cuda", ref, "--fail-on", "error").returncode == 1
    assert imgscan("cuda", ref).returncode == 0
    md = imgscan("cuda", ref, "--markdown").stdout
    assert "| cudnn | 9.13.0 | /usr/local/cuda-13.0/lib64/libcudnn.so.9.13.0 | ld_library_path |" in md
    scan = imgscan("scan", ref)
    assert (
        scan.returncode == 0 and "Debian GNU/Linux 12" in scan.stdout and "cuda.pin-mismatch" in scan.stdout
    )
