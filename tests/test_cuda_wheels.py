"""Acceptance of `imgscan cuda` on images made of the real torch 2.14.1 wheel and real nvidia wheels.

Images (tests/cuda_images.py, cached): 'pip' (torch + every nvidia wheel it pins, Debian's python3.11) and
'shadow' (the same with torch's cuDNN and NCCL wheels uninstalled, cuDNN 9.13.0 and NCCL 2.27.7 installed
NVIDIA's tarball way under /usr/local/cuda-13.0 on LD_LIBRARY_PATH, and a gcc-built extension whose
RUNPATH copy of libcudart loses to the LD_LIBRARY_PATH one).

Ground truth is the image's own ld.so (tests/oracle.py) in a chroot of the image's root filesystem, traced
in the order `import torch` loads things: libtorch_global_deps.so, torch/_C*.so, then libtorch_cuda.so.
The cuDNN sub-libraries are dlopened by libcudnn.so.9 (and the engines by libcudnn_graph.so.9), which no
trace shows: in a scratch copy of the tree (hard links) those two files get the names they dlopen added as
DT_NEEDED (patchelf), so ld.so resolves them from the right requester with the same search order dlopen
uses. Every CUDA library of imgscan's report is compared with the oracle (path as printed and real path);
the test prints the table and asserts zero disagreements. About 1.5 min warm on 2 cores (two `imgscan
cuda` reads of a 3 GB image, ~30 s each), plus the cold build of tests/cuda_images.py (~6 min).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import cuda_images
from tests.conftest import BUILD_TIMES
from tests.cuda_images import CUDA_HOME, CUDA_LLP, EXT_RUNPATH, EXT_SO, PYTHON, CudaImages
from tests.imagebuild import BuildError, run
from tests.linker_images import LinkerImage
from tests.oracle import Oracle, Trace, hwcaps_mask, read_elf_header, resolve_in_root

SITE = "/usr/local/lib/python3.11/dist-packages"
TORCH_LIB = f"{SITE}/torch/lib"
PINNED = {"cudnn": "9.24.0.43", "nccl": "2.30.7", "cublas": "13.1.1.3", "cublasLt": "13.1.1.3"}
CUDNN_HOLDER = re.compile(r"libcudnn(_graph)?\.so\.(\d+)")


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    if os.geteuid() != 0:
        pytest.skip("building the images and the ld.so oracle (chroot) need root")


# --------------------------------------------------------------------------------------------------------
# the oracle, in the order torch's process loads things


@dataclass(frozen=True)
class OracleLoad:
    path: str | None  # as ld.so printed it
    realpath: str | None  # canonical path in the image
    root: str  # the traced object that loaded it first


def canonical(tree: Path, path: str | None) -> str | None:
    """The image path `path` resolves to inside tree (symlinks followed as in a chroot)."""
    if path is None:
        return None
    host = resolve_in_root(tree, path)
    return None if host is None else "/" + str(host.relative_to(tree))


def add_dlopen_needed(tree: Path, path: str, soname: str) -> list[str]:
    """Give the cuDNN object at image path `path` a DT_NEEDED for every sub-library it dlopens (the names
    '%s.%d' % (name, major) built from its 'libcudnn_*.so' strings). The file is replaced by a patched copy,
    never written in place (the tree is hard links into the cache)."""
    host = resolve_in_root(tree, path)
    assert host is not None, path
    major = soname.rsplit(".", 1)[1]
    names = sorted(
        {f"{m.decode()}.{major}" for m in re.findall(rb"(libcudnn_[a-z_]+\.so)\0", host.read_bytes())}
    )
    if names:
        copy = host.with_name(host.name + ".probe")
        shutil.copy2(host, copy)
        run(["patchelf", *(a for n in names for a in ("--add-needed", n)), copy])
        os.replace(copy, host)
    return names


def dlopen_probe(tree: Path, env: dict[str, str], mask: str, root_obj: str) -> Trace:
    """The trace of root_obj in a scratch copy of tree where libcudnn.so.N and libcudnn_graph.so.N NEED what
    they dlopen: ld.so then resolves each sub-library from the object that really asks for it."""
    scratch = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".probe-"))
    try:
        root = scratch / "rootfs"
        run(["cp", "-al", tree, root])
        oracle = Oracle(root, env, mask)
        patched: set[str] = set()
        for _ in range(4):
            trace = oracle.trace(root_obj)
            todo = [
                ld
                for ld in trace.loads or []
                if ld.path and CUDNN_HOLDER.fullmatch(ld.name) and ld.name not in patched
            ]
            if not todo:
                return trace
            for ld in todo:
                patched.add(ld.name)
                add_dlopen_needed(root, ld.path, ld.name)  # type: ignore[arg-type]
        raise AssertionError(f"cuDNN probe did not settle: {patched}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class ProcessOracle:
    """soname -> where the real loader puts it, in the order torch's process loads things."""

    loads: dict[str, OracleLoad] = field(default_factory=dict)
    traces: dict[str, Trace] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)  # a later root resolving a name elsewhere

    def add(self, label: str, trace: Trace, tree: Path, process_root: bool = True) -> None:
        """Record what trace loads that no earlier root loaded; a process root (one of the objects `import
        torch` loads itself) resolving an earlier name elsewhere is a conflict."""
        assert trace.loads is not None, f"{label}: {trace.skipped}"
        self.traces[label] = trace
        for ld in trace.loads:
            if ld.interp:
                continue
            seen = self.loads.get(ld.name)
            real = canonical(tree, ld.path)
            if seen is None:
                self.loads[ld.name] = OracleLoad(ld.path, real, label)
            elif seen.realpath != real and process_root:
                self.conflicts.append(f"{ld.name}: {seen.root} -> {seen.realpath}, {label} -> {real}")


def torch_oracle(image: LinkerImage, level: str) -> ProcessOracle:
    tree = image.rootfs
    assert tree is not None
    mask = hwcaps_mask(level)
    oracle = Oracle(tree, image.env, mask)
    (c_ext,) = (p.name for p in (tree / SITE.lstrip("/") / "torch").glob("_C.*.so"))
    roots = {
        "libtorch_global_deps.so": f"{TORCH_LIB}/libtorch_global_deps.so",
        c_ext: f"{SITE}/torch/{c_ext}",
        "libtorch_cuda.so": f"{TORCH_LIB}/libtorch_cuda.so",
    }
    traces = oracle.trace_many(roots.values())
    result = ProcessOracle()
    for label, path in roots.items():
        result.add(label, traces[path], tree)
    probe = dlopen_probe(tree, image.env, mask, roots["libtorch_cuda.so"])
    result.add("cudnn dlopen probe", probe, tree, process_root=False)
    return result


# --------------------------------------------------------------------------------------------------------
# comparison


@dataclass
class Row:
    library: str
    soname: str
    imgscan: str | None
    oracle: str | None
    root: str
    agree: bool
    note: str = ""


def compare_libraries(report: dict, po: ProcessOracle, image: LinkerImage, level: str) -> list[Row]:
    """Every CUDA library imgscan lists vs the oracle; a name no process root loads is traced from the
    objects imgscan says requested it (as `ld.so --list` would)."""
    assert image.rootfs is not None
    rows = []
    for lib in report["libraries"]:
        got = po.loads.get(lib["soname"])
        if got is None:
            oracle = Oracle(image.rootfs, image.env, hwcaps_mask(level))
            for requester, trace in oracle.trace_many(lib["requested_by"]).items():
                if trace.loads is not None:
                    po.add(f"{Path(requester).name} alone", trace, image.rootfs, process_root=False)
            got = po.loads.get(lib["soname"])
        if got is None:
            rows.append(Row(lib["name"], lib["soname"], lib["realpath"], None, "-", False, "no oracle trace"))
            continue
        agree = got.realpath == lib["realpath"] and got.path == lib["path"]
        note = "" if got.path == lib["path"] else f"printed {got.path} vs {lib['path']}"
        rows.append(Row(lib["name"], lib["soname"], lib["realpath"], got.realpath, got.root, agree, note))
    return rows


def table(title: str, rows: list[Row]) -> str:
    bad = [r for r in rows if not r.agree]
    lines = [f"{title}: {len(rows)} CUDA libraries compared, {len(bad)} disagreements"]
    lines += ["| library | imgscan loads | oracle (root) | agree |", "|---|---|---|---|"]
    for r in rows:
        oracle = "same" if r.oracle == r.imgscan else r.oracle
        lines.append(
            f"| {r.library} | {r.imgscan} | {oracle} ({r.root}) | {'yes' if r.agree else 'NO'} {r.note} |"
        )
    return "\n".join(lines)


def imgscan_cuda(image: LinkerImage, level: str, platform: str) -> dict:
    cmd = [sys.executable, "-m", "imgscan", "cuda", image.ref, "--json", "--hwcaps", level]
    out = subprocess.run([*cmd, "--cpu-platform", platform], capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {lib["name"]: lib for lib in report["libraries"]}


# --------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def images(debootstrap_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> CudaImages:
    _require("umoci", "chroot", "gcc", "patchelf", "dpkg", "apt-get", "ldconfig")
    try:
        built = cuda_images.build_cuda_images(debootstrap_tar, tmp_path_factory.mktemp("cuda-wheels"))
    except BuildError as exc:
        text = str(exc)
        if any(
            s in text for s in ("No matching distribution", "Could not find a version", "apt-get download")
        ):
            pytest.skip(f"wheels or debs not available here: {text[-300:]}")
        raise
    for k, v in built.timings.items():
        BUILD_TIMES[k] = v
    return built


@pytest.fixture(scope="module")
def host(images: CudaImages) -> tuple[str, str]:
    """(hwcaps level, $PLATFORM) of this CPU: the oracle runs here, so imgscan is told the same."""
    assert images.pip.rootfs is not None
    oracle = Oracle(images.pip.rootfs)
    levels = oracle.supported_levels()
    return (levels[0] if levels else "v2"), oracle.platform()


@pytest.fixture(scope="module")
def pip_report(images: CudaImages, host: tuple[str, str]) -> dict:
    return imgscan_cuda(images.pip, *host)


@pytest.fixture(scope="module")
def shadow_report(images: CudaImages, host: tuple[str, str]) -> dict:
    return imgscan_cuda(images.shadow, *host)


@pytest.fixture(scope="module")
def summary() -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines
    if lines:
        print("\n" + "\n\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# the pip image


@pytest.mark.slow
def test_pip_image_holds_a_real_interpreter(images: CudaImages) -> None:
    assert images.pip.rootfs is not None
    hdr = read_elf_header(images.pip.rootfs / PYTHON.lstrip("/"))
    assert hdr is not None and hdr.dynamic and hdr.interp == "/lib64/ld-linux-x86-64.so.2"
    assert (images.pip.rootfs / SITE.lstrip("/") / "nvidia/cudnn/lib/libcudnn.so.9").is_file()
    assert list((images.pip.rootfs / SITE.lstrip("/")).glob("cuda_toolkit-13.0.3*.dist-info"))


@pytest.mark.slow
def test_pip_image_loads_the_pinned_wheels(pip_report: dict) -> None:
    (torch,) = pip_report["torch"]
    assert (torch["version"], torch["resolution"], torch["interpreter"]) == (
        "2.14.1+cu130",
        "python-process",
        PYTHON,
    )
    assert torch["unresolved_pins"] == []
    libs = by_name(pip_report)
    dists = {"cudnn": "nvidia-cudnn-cu13", "nccl": "nvidia-nccl-cu13", "cublas": "nvidia-cublas"}
    for name, version in PINNED.items():
        lib = libs[name]
        assert (lib["version"], lib["rule"]) == (version, "rpath"), lib
        assert lib["realpath"].startswith(f"{SITE}/nvidia/"), lib
        pip = lib["evidence"][0]
        assert (pip["source"], pip["version"]) == ("pip", version), lib["evidence"]
        assert pip["detail"].startswith(f"{dists.get(name, 'nvidia-cublas')} {version} "), pip
        assert lib["owner"] == f"pkg:pypi/{dists.get(name, 'nvidia-cublas')}@{version}"
    nccl = {(e["source"], e["version"]) for e in libs["nccl"]["evidence"]}
    assert ("binary-string", "2.30.7") in nccl
    subs = [lib for lib in pip_report["libraries"] if lib["name"].startswith("cudnn_")]
    assert len(subs) >= 8 and all(lib["version"] == "9.24.0.43" for lib in subs), subs
    ids = [f["id"] for f in pip_report["findings"]]
    assert "cuda.pin-mismatch" not in ids and "cuda.missing" not in ids, pip_report["findings"]


@pytest.mark.slow
def test_pip_image_agrees_with_ldso(
    images: CudaImages, pip_report: dict, host: tuple[str, str], summary: list[str]
) -> None:
    po = torch_oracle(images.pip, host[0])
    rows = compare_libraries(pip_report, po, images.pip, host[0])
    summary.append(table("pip image", rows))
    assert len(rows) >= 20 and not po.conflicts, po.conflicts
    assert [r for r in rows if not r.agree] == [], table("pip image", rows)


# --------------------------------------------------------------------------------------------------------
# the shadowing image


@pytest.mark.slow
def test_shadow_image_loads_the_tarball_copies(images: CudaImages, shadow_report: dict) -> None:
    versions = images.meta["versions"]
    (torch,) = shadow_report["torch"]
    assert (torch["resolution"], torch["interpreter"]) == ("python-process", PYTHON)
    libs = by_name(shadow_report)
    cudnn, nccl = libs["cudnn"], libs["nccl"]
    assert cudnn["realpath"] == f"{CUDA_HOME}/lib64/libcudnn.so.{versions['cudnn']}"
    assert (cudnn["rule"], cudnn["version"], cudnn["path"]) == (
        "ld_library_path",
        versions["cudnn"],
        f"{CUDA_LLP}/libcudnn.so.9",
    )
    assert {e["source"] for e in cudnn["evidence"]} == {"file-name", "header"}, cudnn["evidence"]
    assert {e["version"] for e in cudnn["evidence"]} == {versions["cudnn"]}
    subs = [lib for lib in shadow_report["libraries"] if lib["name"].startswith("cudnn_")]
    assert subs and all(
        lib["version"] == versions["cudnn"] and lib["realpath"].startswith(f"{CUDA_HOME}/lib64/")
        for lib in subs
    ), subs
    assert nccl["realpath"] == f"{CUDA_HOME}/lib64/libnccl.so.{versions['nccl']}"
    assert (nccl["rule"], nccl["version"]) == ("ld_library_path", versions["nccl"])
    sources = {e["source"]: e["version"] for e in nccl["evidence"]}
    assert sources["file-name"] == sources["binary-string"] == versions["nccl"], nccl["evidence"]
    assert (libs["cublas"]["version"], libs["cublas"]["rule"]) == (PINNED["cublas"], "rpath")
    mismatched = {
        f["message"].split(":", 1)[0] for f in shadow_report["findings"] if f["id"] == "cuda.pin-mismatch"
    }
    assert mismatched == {"libcudnn.so.9", "libnccl.so.2"}, shadow_report["findings"]
    assert "cuda.missing" not in {f["id"] for f in shadow_report["findings"]}


@pytest.mark.slow
def test_shadow_image_agrees_with_ldso(
    images: CudaImages, shadow_report: dict, host: tuple[str, str], summary: list[str]
) -> None:
    po = torch_oracle(images.shadow, host[0])
    assert po.loads["libcudnn.so.9"].path == f"{CUDA_LLP}/libcudnn.so.9"  # the image is what it claims
    rows = compare_libraries(shadow_report, po, images.shadow, host[0])
    summary.append(table("shadow image", rows))
    assert len(rows) >= 15 and not po.conflicts, po.conflicts
    assert [r for r in rows if not r.agree] == [], table("shadow image", rows)


# --------------------------------------------------------------------------------------------------------
# the extension


@pytest.mark.slow
def test_extension_takes_the_ld_library_path_copy(
    images: CudaImages, shadow_report: dict, host: tuple[str, str], summary: list[str]
) -> None:
    tree = images.shadow.rootfs
    assert tree is not None
    cudart_file = images.meta["versions"]["cudart file"]
    (ext,) = [e for e in shadow_report["extensions"] if e["path"] == EXT_SO]
    loads = {e["name"]: e for e in ext["loads"]}
    assert (loads["libcudart.so.13"]["realpath"], loads["libcudart.so.13"]["rule"]) == (
        cudart_file,
        "ld_library_path",
    )
    mask = hwcaps_mask(host[0])
    trace = Oracle(tree, images.shadow.env, mask).trace(EXT_SO)
    assert trace.loads is not None, trace.skipped
    oracle = {ld.name: canonical(tree, ld.path) for ld in trace.loads if not ld.interp}
    rows = [
        Row(
            "ext " + name,
            name,
            e["realpath"],
            oracle.get(name),
            "myext.so",
            oracle.get(name) == e["realpath"],
        )
        for name, e in loads.items()
    ]
    summary.append(table("extension /opt/ext/lib/myext.so (shadow image)", rows))
    assert [r for r in rows if not r.agree] == [], table("extension", rows)
    # the image is what it claims: without LD_LIBRARY_PATH the RUNPATH copy is the one ld.so takes
    alone = Oracle(tree, {}, mask).trace(EXT_SO)
    assert alone.loads is not None
    assert [canonical(tree, ld.path) for ld in alone.loads if ld.name == "libcudart.so.13"] == [
        f"{EXT_RUNPATH}/libcudart.so.13"
    ]
    torch_cudart = by_name(shadow_report)["cudart"]["realpath"]
    assert torch_cudart == f"{SITE}/nvidia/cu13/lib/libcudart.so.13"
    (finding,) = [f for f in shadow_report["findings"] if f["id"] == "cuda.extension-other-copy"]
    assert EXT_SO in finding["message"] and finding["objects"] == [EXT_SO, cudart_file, torch_cudart]
