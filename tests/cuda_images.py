"""Real-wheel CUDA images for `imgscan cuda`: torch 2.14.1 and real nvidia wheels, layered with umoci.

Both images start from the cached torch tier of tests/linker_images.py (debootstrap rootfs, the nvidia wheels
torch pins, torch; tags base, nvidia, torch), whose blobs are hard-linked, not copied. On top:

  pip     + L3 "python": Debian's python3.11-minimal and its missing dependencies installed by dpkg (the
            interpreter makes imgscan model `import torch` in a Python process) and the cuda-toolkit wheel's
            metadata (what `pip install torch` puts beside the nvidia wheels; it carries the cuBLAS pin).
  shadow  + L4 "cuda": `pip uninstall nvidia-cudnn-cu13 nvidia-nccl-cu13` (files listed in RECORD removed:
            whiteouts), then another cuDNN and NCCL release laid out as NVIDIA's tarball/deb installs them:
            /usr/local/cuda-13.0/lib64/libcudnn.so.9.13.0 with libcudnn.so.9 -> libcudnn.so.9.13.0 (each
            sub-library too), libnccl.so.2.27.7, include/ with the release's real headers, /usr/local/cuda ->
            /etc/alternatives/cuda -> /usr/local/cuda-13.0, /etc/ld.so.conf.d/cuda.conf, ldconfig;
          + L5 "ext": a gcc-built extension /opt/ext/lib/myext.so (NEEDED libcudart.so.13, DT_RUNPATH
            /opt/ext/cudart, which holds a copy of the wheel's libcudart) and a second copy of libcudart as
            /usr/local/cuda-13.0/lib64/libcudart.so.13.0.96 (on LD_LIBRARY_PATH), ldconfig again;
          config Env LD_LIBRARY_PATH=/usr/local/cuda/lib64.

The other cuDNN/NCCL releases are real wheels pip downloads (OTHER_WHEELS, cached in CACHE_DIR/cuda-wheels);
the debs come from `apt-get download` (cached under CACHE_DIR/python-debs). The OCI layout and, for the ld.so
oracle, each image's root filesystem (the bundle umoci repacked; identical files hard-linked between the two)
are cached under CACHE_DIR/cuda-<key>, keyed by every input (~5.7 GB on disk besides the torch tier's blobs,
which are shared; a new key removes the older cuda-<key> directories). Cold: about 6 min on 2 cores once the
torch tier is cached (about 7 min more when it is not); warm: pip resolving the inputs (~15 s).

Run standalone to build and print what was built:  python -m tests.cuda_images [WORKDIR]
"""

from __future__ import annotations

import fcntl
import filecmp
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tests import imagebuild, linker_images
from tests.imagebuild import CACHE_DIR, BuildError, run, timed
from tests.linker_images import IMAGE_PATH, SITE_PACKAGES, TORCH_PIN, LinkerImage
from tests.oracle import read_elf_header

CUDA_BUILD_VERSION = 1
# Releases other than torch's pins (9.24.0.43, 2.30.7), chosen small among what pip finds for cu13.
OTHER_WHEELS = ("nvidia-cudnn-cu13==9.13.0.50", "nvidia-nccl-cu13==2.27.7")
SHADOWED_DISTS = ("nvidia-cudnn-cu13", "nvidia-nccl-cu13")
# python3.11-minimal and what debootstrap's minbase lacks of its dependency closure.
PYTHON_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libexpat1", "libssl3")
PYTHON = "/usr/bin/python3.11"
CUDA_HOME = "/usr/local/cuda-13.0"
CUDA_LLP = "/usr/local/cuda/lib64"
CUDA_CONF = "/etc/ld.so.conf.d/cuda.conf"
EXT_SO = "/opt/ext/lib/myext.so"
EXT_RUNPATH = "/opt/ext/cudart"
PIP_TAG, SHADOW_TAG = "pip", "shadow"
EXT_SOURCE = """\
/* myext: a CUDA extension of the kind torch.utils.cpp_extension builds, reduced to one cudart call. */
extern int cudaRuntimeGetVersion(int *version);

int myext_cudart_version(void) {
    int version = 0;
    return cudaRuntimeGetVersion(&version) == 0 ? version : -1;
}
"""


@dataclass
class CudaImages:
    """The two images (one OCI layout, tags pip and shadow), each with its cached root filesystem, and what
    went into them (meta: versions, wheels, debs, build timings)."""

    pip: LinkerImage
    shadow: LinkerImage
    meta: dict
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# inputs: wheels, debs


def toolkit_wheel(work: Path) -> dict:
    """The cuda-toolkit wheel torch 2.14.1 requires (its metadata pins cuBLAS & co): a pip report entry."""
    work.mkdir(parents=True, exist_ok=True)
    (torch,) = linker_images._pip_report([TORCH_PIN], work)
    reqs = linker_images._linux_requirements(torch["metadata"].get("requires_dist", []), set())
    specs = [f"{name}{spec}" for name, spec, _ in reqs if name == "cuda-toolkit"]
    if not specs:
        raise BuildError(f"{TORCH_PIN} does not require cuda-toolkit")
    (entry,) = linker_images._pip_report(specs[:1], work)
    return {
        "name": entry["metadata"]["name"],
        "version": entry["metadata"]["version"],
        "url": entry["download_info"]["url"],
        "sha256": entry["download_info"]["archive_info"]["hashes"]["sha256"],
    }


def _cached_wheel(req: str, dest: Path) -> Path:
    """The wheel of `name==version` in dest, fetched by `pip download --no-deps` when absent."""
    name, _, version = req.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:"]
        run([*pip, "-d", dest, req])
        found = sorted(dest.glob(pattern))
    if not found:
        raise BuildError(f"pip download {req}: no {pattern} in {dest}")
    return found[-1]


def python_debs(dest: Path) -> list[Path]:
    """PYTHON_DEBS as .deb files (apt-get download, cached in dest)."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(not list(dest.glob(f"{name}_*.deb")) for name in PYTHON_DEBS):
        proc = subprocess.run(
            ["apt-get", "download", *PYTHON_DEBS], cwd=dest, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise BuildError(f"apt-get download {' '.join(PYTHON_DEBS)}: {proc.stderr[-2000:]}")
    return [sorted(dest.glob(f"{name}_*.deb"))[-1] for name in PYTHON_DEBS]


def cache_key(torch: LinkerImage, toolkit: dict, wheels: list[Path], debs: list[Path]) -> str:
    raw = json.dumps(
        [
            torch.layout.parent.name,
            toolkit["sha256"],
            [(w.name, w.stat().st_size) for w in wheels],
            [d.name for d in debs],
            EXT_SOURCE,
            CUDA_BUILD_VERSION,
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# layer contents


def install_python(root: Path, debs: list[Path], toolkit: Path) -> None:
    """L3: dpkg installs the debs (maintainer scripts run chrooted: pyc files, ldconfig trigger); the
    cuda-toolkit wheel is unpacked into dist-packages like the nvidia wheels."""
    run(["dpkg", f"--root={root}", "--install", *debs])
    hdr = read_elf_header(root / PYTHON.lstrip("/"))
    if hdr is None or not hdr.dynamic or hdr.interp is None:
        raise BuildError(f"{PYTHON} is not a dynamically linked ELF executable after dpkg: {hdr}")
    linker_images._unzip_wheel(toolkit, root / SITE_PACKAGES)


def pip_uninstall(site: Path, dist: str) -> str:
    """What `pip uninstall -y DIST` does to a site directory: every file its RECORD lists, then the
    directories left empty. Returns the version removed."""
    prefix = dist.replace("-", "_") + "-"
    (info,) = [p for p in site.iterdir() if p.name.startswith(prefix) and p.name.endswith(".dist-info")]
    dirs: set[Path] = set()
    for line in (info / "RECORD").read_text().splitlines():
        rel = line.rsplit(",", 2)[0] if line else ""
        path = site / rel
        if rel and path.is_file():
            path.unlink()
            dirs.update(p for p in path.parents if site in p.parents)
    shutil.rmtree(info, ignore_errors=True)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
    return info.name[len(prefix) : -len(".dist-info")]


def _header_version(text: str, macros: tuple[str, ...]) -> str:
    parts = []
    for macro in macros:
        m = re.search(rf"^#define\s+{macro}\s+(\d+)", text, re.M)
        if m is None:
            raise BuildError(f"header without {macro}")
        parts.append(m.group(1))
    return ".".join(parts)


def _install_tarball_lib(lib64: Path, data: bytes, soname: str, version: str) -> str:
    """libX.so.<version> (the file), libX.so.<major> -> it, libX.so -> libX.so.<major>: NVIDIA's layout."""
    stem = soname.partition(".so.")[0]
    full = f"{stem}.so.{version}"
    (lib64 / full).write_bytes(data)
    os.chmod(lib64 / full, 0o644)
    os.symlink(full, lib64 / soname)
    os.symlink(soname, lib64 / f"{stem}.so")
    return full


def install_cuda_tarballs(root: Path, cudnn_whl: Path, nccl_whl: Path) -> dict[str, str]:
    """L4: torch's cuDNN and NCCL wheels uninstalled, the other releases laid out under CUDA_HOME as
    NVIDIA's tarballs and debs do; ld.so.conf.d entry and a regenerated ld.so.cache. Returns versions."""
    site = root / SITE_PACKAGES
    removed = {dist: pip_uninstall(site, dist) for dist in SHADOWED_DISTS}
    home = root / CUDA_HOME.lstrip("/")
    lib64, include = home / "lib64", home / "include"
    lib64.mkdir(parents=True)
    include.mkdir(parents=True)
    versions: dict[str, str] = {f"removed {k}": v for k, v in removed.items()}
    for wheel, pkg, header, macros in (
        (cudnn_whl, "cudnn", "cudnn_version.h", ("CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL")),
        (nccl_whl, "nccl", "nccl.h", ("NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH")),
    ):
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            version = _header_version(z.read(f"nvidia/{pkg}/include/{header}").decode(), macros)
            for name in names:
                rel = name.split(f"nvidia/{pkg}/", 1)[-1]
                if name.startswith(f"nvidia/{pkg}/include/") and not name.endswith("/"):
                    (include / rel.removeprefix("include/")).parent.mkdir(parents=True, exist_ok=True)
                    (include / rel.removeprefix("include/")).write_bytes(z.read(name))
                elif name.startswith(f"nvidia/{pkg}/lib/") and re.search(r"\.so\.\d+$", name):
                    _install_tarball_lib(lib64, z.read(name), rel.removeprefix("lib/"), version)
        dist_version = wheel.name.split("-")[1]
        if dist_version != version and not dist_version.startswith(version + "."):
            raise BuildError(f"{wheel.name}: header {header} says {version}")
        versions[pkg] = version
        versions[f"{pkg} wheel"] = dist_version
    os.symlink(CUDA_HOME, root / "etc/alternatives/cuda")
    os.symlink("/etc/alternatives/cuda", root / "usr/local/cuda")
    (root / CUDA_CONF.lstrip("/")).write_text(CUDA_LLP + "\n")
    run(["ldconfig", "-r", root])
    return versions


def build_extension(root: Path, work: Path) -> dict[str, str]:
    """L5: myext.so compiled and linked here against the image's libcudart.so.13 (the nvidia wheel's), its
    RUNPATH dir holding a copy of that file, and a second copy on LD_LIBRARY_PATH named as NVIDIA does."""
    site = root / SITE_PACKAGES
    (rt_info,) = site.glob("nvidia_cuda_runtime-*.dist-info")
    cudart_version = rt_info.name.removeprefix("nvidia_cuda_runtime-").removesuffix(".dist-info")
    wheel_lib = site / "nvidia/cu13/lib"
    data = (wheel_lib / "libcudart.so.13").read_bytes()
    # never through the image's /usr/local/cuda: its absolute link target would leave the root on the host
    full = _install_tarball_lib(
        root / CUDA_HOME.lstrip("/") / "lib64", data, "libcudart.so.13", cudart_version
    )
    ext_rt = root / EXT_RUNPATH.lstrip("/")
    ext_rt.mkdir(parents=True)
    (ext_rt / "libcudart.so.13").write_bytes(data)
    work.mkdir(parents=True, exist_ok=True)
    (work / "myext.c").write_text(EXT_SOURCE)
    out = root / EXT_SO.lstrip("/")
    out.parent.mkdir(parents=True)
    gcc = ["gcc", "-shared", "-fPIC", "-O2", "-o", out, work / "myext.c", f"-Wl,-soname,{Path(EXT_SO).name}"]
    run([*gcc, f"-L{wheel_lib}", "-l:libcudart.so.13", f"-Wl,--enable-new-dtags,-rpath,{EXT_RUNPATH}"])
    run(["ldconfig", "-r", root])
    return {"cudart": cudart_version, "cudart file": f"{CUDA_HOME}/lib64/{full}"}


# --------------------------------------------------------------------------------------------------------
# the build


def _link_layout(src: Path, dest: Path) -> None:
    """A new OCI layout holding src's images: blobs hard-linked (content-addressed, never rewritten)."""
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for blob in (src / "blobs" / "sha256").iterdir():
        os.link(blob, dest / "blobs" / "sha256" / blob.name)
    for name in ("index.json", "oci-layout"):
        shutil.copy2(src / name, dest / name)


def dedupe(a: Path, b: Path) -> int:
    """Hard-link every regular file of tree b to the identical one (metadata and bytes) at the same path
    in tree a. Returns the bytes saved."""
    saved = 0
    for dirpath, _, files in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        for name in files:
            pa, pb = os.path.join(dirpath, name), os.path.join(b, rel, name)
            try:
                sa, sb = os.lstat(pa), os.lstat(pb)
            except OSError:
                continue
            same_meta = all(
                getattr(sa, k) == getattr(sb, k)
                for k in ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns")
            )
            if not stat.S_ISREG(sa.st_mode) or sa.st_ino == sb.st_ino or not same_meta:
                continue
            if filecmp.cmp(pa, pb, shallow=False):
                tmp = pb + ".imgscan-dedupe"
                os.link(pa, tmp)
                os.replace(tmp, pb)
                saved += sa.st_size
    return saved


def _build(
    torch: LinkerImage,
    toolkit: Path,
    wheels: list[Path],
    debs: list[Path],
    target: Path,
    t: dict[str, float],
) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".build-cuda-") as tmp_name:
        tmp = Path(tmp_name)
        layout, bundle, trees = tmp / "layout", tmp / "bundle", tmp / "rootfs"
        trees.mkdir()
        _link_layout(torch.layout, layout)
        root = bundle / "rootfs"
        meta: dict = {
            "toolkit": toolkit.name,
            "wheels": [w.name for w in wheels],
            "debs": [d.name for d in debs],
        }
        with timed("cuda:unpack-torch", t):
            run(["umoci", "unpack", "--image", f"{layout}:{torch.tag}", bundle])
        with timed("cuda:layer-python", t):
            install_python(root, debs, toolkit)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{PIP_TAG}", bundle])
        with timed("cuda:copy-pip-rootfs", t):
            run(["cp", "-a", root, trees / PIP_TAG])
        with timed("cuda:layer-cuda", t):
            meta["versions"] = install_cuda_tarballs(root, wheels[0], wheels[1])
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:cuda", bundle])
        with timed("cuda:layer-ext", t):
            meta["versions"].update(build_extension(root, tmp / "cc"))
            run(["umoci", "repack", "--image", f"{layout}:ext", bundle])
        cfg = ["umoci", "config", "--image", f"{layout}:ext", "--tag", SHADOW_TAG]
        for k, v in shadow_env().items():
            cfg += ["--config.env", f"{k}={v}"]
        run(cfg)
        for tag in ("cuda", "ext"):
            run(["umoci", "rm", "--image", f"{layout}:{tag}"])
        run(["umoci", "gc", "--layout", layout])
        os.rename(root, trees / SHADOW_TAG)
        shutil.rmtree(bundle)
        shutil.rmtree(tmp / "cc", ignore_errors=True)
        with timed("cuda:dedupe", t):
            meta["dedupe_bytes"] = dedupe(trees / PIP_TAG, trees / SHADOW_TAG)
        meta["timings"] = t
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for old in CACHE_DIR.iterdir():  # built from earlier inputs: several GB each
            if re.fullmatch(r"cuda-[0-9a-f]{16}", old.name):
                shutil.rmtree(old, ignore_errors=True)
        shutil.move(tmp, target)
        os.mkdir(tmp)  # TemporaryDirectory cleans up the name it made


def shadow_env() -> dict[str, str]:
    return {"PATH": IMAGE_PATH, "LD_LIBRARY_PATH": CUDA_LLP}


def build_cuda_images(base_tar: Path, work: Path) -> CudaImages:
    """Both images, built (about 5 min) when CACHE_DIR holds none for these inputs."""
    t: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    torch = linker_images.build_torch(base_tar, work / "torch")
    t.update({f"torch:{k}": v for k, v in torch.timings.items()})
    with timed("cuda:resolve-inputs", t):
        toolkit_entry = toolkit_wheel(work / "pip")
        toolkit = linker_images._wheel_file(toolkit_entry, CACHE_DIR / "cuda-wheels")
        wheels = [_cached_wheel(req, CACHE_DIR / "cuda-wheels") for req in OTHER_WHEELS]
        debs = python_debs(CACHE_DIR / "python-debs")
    target = CACHE_DIR / f"cuda-{cache_key(torch, toolkit_entry, wheels, debs)}"
    if not (target / "meta.json").exists():
        with open(CACHE_DIR / ".lock-cuda", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "meta.json").exists():
                with timed("cuda:build", t):
                    _build(torch, toolkit, wheels, debs, target, t)
    meta = json.loads((target / "meta.json").read_text())
    layout = target / "layout"
    pip = LinkerImage("cuda-pip", layout, PIP_TAG, dict(torch.env), target / "rootfs" / PIP_TAG)
    shadow = LinkerImage("cuda-shadow", layout, SHADOW_TAG, shadow_env(), target / "rootfs" / SHADOW_TAG)
    return CudaImages(pip, shadow, meta, t)


def main(argv: list[str]) -> int:
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="imgscan-cuda-"))
    start = time.monotonic()
    images = build_cuda_images(imagebuild.debootstrap_tarball(), work)
    for k, v in images.timings.items():
        print(f"{k:28s} {v:7.1f} s")
    print(json.dumps({k: v for k, v in images.meta.items() if k != "timings"}, indent=1))
    for img in (images.pip, images.shadow):
        print(f"{img.name}: {img.ref}  rootfs {img.rootfs}  env {img.env}")
    print(f"total {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
