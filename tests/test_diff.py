"""`imgscan diff` on real images: the bundled demo and variants umoci builds from it (a layer on top and a
config change each), the SBOM files `imgscan sbom` writes of them, and syft's SBOM; dpkg's own
--compare-versions is the oracle for the deb ordering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imgscan.diff.versions import compare_deb, compare_versions
from tests.syftrun import run_syft

DEMO_OCI = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "oci"
SITE = "usr/local/lib/python3.11/dist-packages"
LAYER1 = "sha256:f89460ea0125d8ab49948156a8cea7253a2db4865a39ed94c1eb8519d6f8e0fe"  # the pip layer
NEW_LD_PATH = "/usr/local/nvidia/lib64"


def imgscan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def diff_json(*args: str | Path) -> dict:
    proc = imgscan("diff", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run(cmd: list[str | Path]) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def _variant(layout: Path, tag: str, bundle: Path, env: str | None = None) -> str:
    """Repack the edited bundle as a new tag (one layer on the demo), optionally setting Env."""
    run(["umoci", "repack", "--image", f"{layout}:{tag}", bundle])
    if env is not None:
        run(["umoci", "config", "--image", f"{layout}:{tag}", "--config.env", env])
    return f"oci-dir:{layout}:{tag}"


def _remove_shadow(root: Path) -> None:
    """Delete the cuDNN 9.13 copy on LD_LIBRARY_PATH and bring back the pinned pip cuDNN from layer 1."""
    for lib in (root / "usr/local/cuda-13.0/lib64").glob("libcudnn*"):
        lib.unlink()
    (root / "usr/local/cuda-13.0/include/cudnn_version.h").unlink()
    blob = DEMO_OCI / "blobs" / "sha256" / LAYER1.split(":")[1]
    with tarfile.open(blob) as tar:
        members = [m for m in tar.getmembers() if "cudnn" in m.name]
        tar.extractall(root, members=members, filter="tar")


def _edit(root: Path) -> None:
    """Remove a wheel, upgrade another's dist-info, add an unowned library."""
    site = root / SITE
    shutil.rmtree(site / "nvidia_nvtx-13.0.85.dist-info")
    old = site / "nvidia_cufile-1.15.1.6.dist-info"
    new = site / "nvidia_cufile-1.16.0.1.dist-info"
    old.rename(new)
    meta = new / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.15.1.6", "Version: 1.16.0.1"))
    lib = root / "usr/lib/x86_64-linux-gnu"
    shutil.copy2(lib / "libz.so.1.2.13", root / "usr/local/lib/libextra.so.1")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("umoci") is None:
        pytest.skip("needs umoci")
    work = tmp_path_factory.mktemp("diff")
    layout = work / "oci"
    shutil.copytree(DEMO_OCI, layout)
    refs = {"demo": f"oci-dir:{layout}:demo"}
    for tag, edit, env in (
        ("noshadow", _remove_shadow, f"LD_LIBRARY_PATH={NEW_LD_PATH}"),
        ("edited", _edit, "LD_LIBRARY_PATH=/opt/lib"),
    ):
        bundle = work / tag
        run(["umoci", "unpack", "--image", f"{layout}:demo", bundle])
        edit(bundle / "rootfs")
        refs[tag] = _variant(layout, tag, bundle, env)
        shutil.rmtree(bundle)
    return refs


@pytest.fixture(scope="module")
def noshadow(images: dict[str, str]) -> dict:
    return diff_json(images["demo"], images["noshadow"])


def test_removing_the_cudnn_shadow_changes_cudnn_and_ld_library_path_only(noshadow: dict) -> None:
    cudnn = {c["name"]: c for c in noshadow["cuda"]}
    assert cudnn and all(name.startswith("cudnn") for name in cudnn)
    front = cudnn["cudnn"]
    assert front["before"] == {
        "version": "9.13.0",
        "path": "/usr/local/cuda-13.0/lib64/libcudnn.so.9.13.0",
        "rule": "ld_library_path",
    }
    assert front["after"]["version"] == "9.24.0.43"
    assert front["after"]["path"] == f"/{SITE}/nvidia/cudnn/lib/libcudnn.so.9"
    image = noshadow["image"]
    assert image["ld_library_path"] == {"before": "/usr/local/cuda/lib64", "after": NEW_LD_PATH}
    assert image["env"] == {
        "added": {},
        "removed": {},
        "changed": {"LD_LIBRARY_PATH": {"before": "/usr/local/cuda/lib64", "after": NEW_LD_PATH}},
    }
    assert image["labels"] == {"added": {}, "removed": {}, "changed": {}}
    assert image["cmd"] is None and image["entrypoint"] is None and image["platform"] is None
    assert len(image["layers"]["shared"]) == 3 and len(image["layers"]["added"]) == 1
    assert noshadow["torch"] == []
    assert all("libcudnn" in row["needed"] for row in noshadow["linkage"])
    # the consequences of the fix itself: the pin mismatch is gone and the pinned wheel is back
    assert [f.split(":")[0] for f in noshadow["findings"]["gone"]] == ["error cuda.pin-mismatch"]
    assert noshadow["findings"]["new"] == []
    assert noshadow["packages"]["added"] == [
        {"ecosystem": "python", "name": "nvidia-cudnn-cu13", "version": "9.24.0.43"}
    ]
    assert noshadow["packages"]["removed"] == [] and noshadow["packages"]["changed"] == []


def test_package_and_config_changes(images: dict[str, str]) -> None:
    result = diff_json(images["demo"], images["edited"], "--files")
    packages = result["packages"]
    assert {"ecosystem": "python", "name": "nvidia-nvtx", "version": "13.0.85"} in packages["removed"]
    assert packages["changed"] == [
        {
            "ecosystem": "python",
            "name": "nvidia-cufile",
            "before": "1.15.1.6",
            "after": "1.16.0.1",
            "change": "upgraded",
        }
    ]
    assert result["image"]["ld_library_path"]["after"] == "/opt/lib"
    assert result["cuda"]  # cuDNN no longer found on LD_LIBRARY_PATH
    files = result["files"]
    assert "/usr/local/lib/libextra.so.1" in files["added"]
    assert f"/{SITE}/nvidia_nvtx-13.0.85.dist-info/METADATA" in files["removed"]
    assert not any(c["path"].startswith("/usr/bin/") for c in files["changed"])


def test_fail_on(images: dict[str, str]) -> None:
    a, b = images["demo"], images["noshadow"]
    assert imgscan("diff", a, a, "--fail-on", "any").returncode == 0
    assert imgscan("diff", a, b, "--fail-on", "cuda-change").returncode == 1
    assert imgscan("diff", a, b, "--fail-on", "downgrade").returncode == 0
    assert imgscan("diff", a, b, "--fail-on", "new-finding").returncode == 0
    assert imgscan("diff", b, a, "--fail-on", "new-finding").returncode == 1
    assert imgscan("diff", b, a, "--fail-on", "downgrade").returncode == 0  # a wheel removed is no downgrade


def test_image_diff_equals_sbom_file_diff(images: dict[str, str], tmp_path: Path) -> None:
    files = []
    for tag in ("demo", "edited"):
        out = tmp_path / f"{tag}.json"
        assert imgscan("sbom", images[tag], "-o", out).returncode == 0
        files.append(out)
    from_images = diff_json(images["demo"], images["edited"])
    from_files = diff_json(*files)
    mixed = diff_json(images["demo"], files[1])
    for result in (from_images, from_files, mixed):
        del result["a"], result["b"]
    assert from_images == from_files == mixed


def test_renderings(images: dict[str, str]) -> None:
    a, b = images["demo"], images["noshadow"]
    table = imgscan("diff", a, b)
    assert table.returncode == 0, table.stderr
    assert "CUDA stack" in table.stdout and "9.24.0.43" in table.stdout and NEW_LD_PATH in table.stdout
    md = imgscan("diff", a, b, "--markdown")
    assert md.returncode == 0 and "### CUDA stack" in md.stdout and "| cudnn |" in md.stdout
    same = imgscan("diff", a, a)
    assert "No differences." in same.stdout


@pytest.mark.skipif(shutil.which("syft") is None, reason="needs syft")
def test_syft_sbom_against_ours(images: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "syft.json").write_text(run_syft(f"oci-dir:{DEMO_OCI}", "cyclonedx-json"))
    result = diff_json(tmp_path / "syft.json", images["demo"])
    assert result["a"]["kind"] == "sbom" and result["b"]["kind"] == "image"
    assert isinstance(result["packages"]["added"], list)


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.2"}')
    proc = imgscan("diff", bad, str(DEMO_OCI))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "1.2 is not supported" in proc.stderr
    proc = imgscan("diff", str(DEMO_OCI), tmp_path / "missing", "--files")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0~rc1"),
        ("1:0.9", "2.0"),
        ("2.36-9+deb12u14", "2.36-9+deb12u4"),
        ("1.0a", "1.0"),
        ("1.0~~", "1.0~"),
        ("1.10", "1.9"),
        ("0:1.0", "1.0"),
        ("1.0-1", "1.0-1~bpo1"),
        ("3.11.2-1+b1", "3.11.2-1"),
        ("1.001", "1.1"),
        ("1.0.", "1.0"),
        ("1.2-3-4", "1.2-3"),
        ("1.0+dfsg", "1.0.0"),
    ],
)
def test_deb_ordering_matches_dpkg(a: str, b: str) -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("needs dpkg")
    for x, y in ((a, b), (b, a)):
        for op, want in (("lt", -1), ("eq", 0), ("gt", 1)):
            dpkg = subprocess.run(["dpkg", "--compare-versions", x, op, y]).returncode == 0
            assert dpkg == (compare_deb(x, y) == want), (x, op, y)


def test_other_ecosystems() -> None:
    assert compare_versions("python", "1.10", "1.9") == 1
    assert compare_versions("python", "2.0rc1", "2.0") == -1
    assert compare_versions("apk", "1.10-r0", "1.9-r3") == 1
    assert compare_versions("python", "not a version", "not a version") == 0
