"""Build real test images with the real tools: debootstrap, umoci, skopeo, buildah.

Every image here is written by the tool that users' images come from; the expected filesystem of an image is
what `umoci unpack` (run as root) puts on disk. Only the one layer umoci cannot write (an opaque whiteout) is
crafted with tarfile, and umoci itself adds it to the image (`umoci raw add-layer`).

Run standalone to build everything once and print the timings:
    python -m tests.imagebuild [--debootstrap] [WORKDIR]
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.treecompare import host_tree

# Bump when what the cached rootfs tarball holds changes (options, post-processing).
BUILD_VERSION = 1
CACHE_DIR = Path(os.environ.get("IMGSCAN_TEST_CACHE", "~/.cache/imgscan-tests")).expanduser()
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# The tags of the layered umoci image, lowest first; each adds one layer to the one before.
UMOCI_TAGS = ("base", "v2", "v3", "v4")
DOCKER_REPO_TAG = "imgscan-test/image:v4"

# Paths the layered images touch: they exist in the debootstrap rootfs and in the mini rootfs.
DELETED_FILE = "etc/motd"  # deleted in v2, re-added in v3
DELETED_DIR = "usr/share/doc/bash"  # deleted with its subtree in v2, re-created with one file in v3
EMPTIED_DIR = "var/cache/debconf"  # all children deleted in v2 (per-file whiteouts), the dir itself in v4
OPAQUE_DIR = "usr/share/zoneinfo"  # opaque whiteout in v4, with new content in the same layer


class BuildError(RuntimeError):
    """A tool failed while building a test image."""


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool, return its stdout, raise BuildError with its stderr when it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


@contextlib.contextmanager
def timed(label: str, timings: dict[str, float] | None) -> Iterator[None]:
    """Record the wall time of a block under `label`."""
    start = time.monotonic()
    try:
        yield
    finally:
        if timings is not None:
            timings[label] = timings.get(label, 0.0) + time.monotonic() - start


# --------------------------------------------------------------------------------------------------------
# debootstrap rootfs, cached as a tarball


@dataclass(frozen=True)
class DebootstrapSpec:
    """What a debootstrap rootfs depends on; its hash names the cached tarball."""

    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    snapshot: str = ""  # the snapshot.debian.org date when the mirror is a snapshot, else ''

    @classmethod
    def from_env(cls) -> DebootstrapSpec:
        """IMGSCAN_TEST_MIRROR overrides the mirror; a snapshot.debian.org mirror pins the date."""
        mirror = os.environ.get("IMGSCAN_TEST_MIRROR", DEFAULT_MIRROR)
        m = re.search(r"snapshot\.debian\.org/archive/[^/]+/(\d{8}T\d{6}Z)", mirror)
        return cls(mirror=mirror, snapshot=m.group(1) if m else "")

    def key(self) -> str:
        raw = json.dumps([self.suite, self.variant, self.mirror, self.snapshot, BUILD_VERSION])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def tarball(self) -> Path:
        return CACHE_DIR / f"debootstrap-{self.suite}-{self.variant}-{self.key()}.tar"


def debootstrap_tarball(spec: DebootstrapSpec | None = None, timings: dict[str, float] | None = None) -> Path:
    """The cached tarball of a debootstrap rootfs, built (about a minute) when absent.

    A lock file keeps two concurrent sessions from building it twice; the tarball appears atomically.
    """
    spec = spec or DebootstrapSpec.from_env()
    target = spec.tarball()
    if target.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".build-") as tmp:
            root = Path(tmp) / "rootfs"
            with timed("debootstrap", timings):
                run(["debootstrap", f"--variant={spec.variant}", spec.suite, root, spec.mirror])
            # The host's hostname leaks into the rootfs: make it stable.
            (root / "etc/hostname").write_text("imgscan-test\n")
            partial = Path(tmp) / "rootfs.tar"
            with timed("debootstrap-tar", timings):
                run(["tar", "--numeric-owner", "-cpf", partial, "-C", root, "."])
            os.replace(partial, target)
    return target


def extract_tarball(tarball: Path, dest: Path) -> Path:
    """Unpack a rootfs tarball keeping owners, modes and device nodes (needs root)."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--numeric-owner", "-xpf", tarball, "-C", dest])
    return dest


def tar_rootfs(root: Path, tarball: Path) -> Path:
    run(["tar", "--numeric-owner", "-cpf", tarball, "-C", root, "."])
    return tarball


# --------------------------------------------------------------------------------------------------------
# mini rootfs: a few host binaries (so buildah RUN works) plus the paths the layered images touch

MINI_TOOLS = ("dash", "rm", "mkdir", "ln", "chmod", "cat", "touch", "cp", "mv")


def _ldd_paths(binary: str) -> list[str]:
    paths = []
    for line in run(["ldd", binary]).splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            paths.append(m.group(1))
    return paths


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def build_mini_rootfs(root: Path) -> Path:
    """A small merged-/usr rootfs with a shell and coreutils, the paths the layered images touch, and the
    awkward entries a real image has: setuid, hardlinks, device nodes, a fifo, long and non-ASCII names."""
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/local/bin", "etc", "var/tmp", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink(f"usr/{link}", root / link)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "root").mkdir(mode=0o700)
    for tool in MINI_TOOLS:
        src = shutil.which(tool)
        if src is None:
            raise BuildError(f"mini rootfs needs {tool} on the host")
        shutil.copy2(os.path.realpath(src), root / "usr/bin" / tool)
        for lib in _ldd_paths(src):
            dest = root / lib.lstrip("/")  # /lib/... lands in usr/lib through the image's own link
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(lib, dest)
    os.symlink("dash", root / "usr/bin/sh")

    _write(root / "etc/motd", "mini rootfs motd\n")
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    _write(root / "etc/group", "root:x:0:\nuser:x:1000:\n")
    _write(root / "etc/hostname", "imgscan-test\n")
    _write(root / "etc/issue.net", "Mini 12\n")
    _write(root / "etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640)
    for pkg in ("bash", "apt", "base-files"):
        _write(root / f"usr/share/doc/{pkg}/copyright", f"{pkg} copyright\n" * 20)
        _write(root / f"usr/share/doc/{pkg}/README", f"{pkg} readme\n")
    os.symlink("README", root / "usr/share/doc/base-files/FAQ")
    for name in ("config.dat", "templates.dat", "passwords.dat"):
        _write(root / EMPTIED_DIR / name, f"{name}\n" * 10, 0o600 if name == "passwords.dat" else 0o644)
    for zone in ("UTC", "Europe/Paris", "Europe/Berlin", "America/New_York"):
        _write(root / OPAQUE_DIR / zone, f"TZif {zone}\n".encode() * 8)
    os.symlink("UTC", root / OPAQUE_DIR / "Zulu")
    _write(root / "usr/bin/su", b"\x7fELF fake su\n", 0o4755)
    _write(root / "usr/bin/wall", b"\x7fELF fake wall\n", 0o2755)
    os.chown(root / "usr/bin/wall", 0, 5)
    _write(root / "usr/bin/gzip", b"\x7fELF fake gzip\n" * 100, 0o755)
    os.link(root / "usr/bin/gzip", root / "usr/bin/gunzip")
    os.link(root / "usr/bin/gzip", root / "usr/bin/uncompress")
    _write(root / "usr/share/empty-file", b"")
    (root / "usr/share/empty-dir").mkdir()
    _write(root / "usr/share/naïve café/文件 with spaces.txt", "unicode\n")
    long_dir = root / "usr/share" / ("d" * 90) / ("e" * 90)
    _write(long_dir / ("f" * 120 + ".txt"), "long path\n")  # > 255 bytes: a pax/GNU long name
    _write(root / "home/user/.profile", "PATH=/usr/bin\n")
    os.chown(root / "home/user", 1000, 1000)
    os.chown(root / "home/user/.profile", 1000, 1000)
    if os.geteuid() == 0:
        os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "dev/loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(root / "dev/initctl", 0o600)
    return root


# --------------------------------------------------------------------------------------------------------
# the layered umoci image


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def apply_v2(root: Path) -> None:
    """Layer 1: deletions (whiteouts), additions, a hardlink, a symlink chain, setuid, type changes."""
    _rm(root / DELETED_FILE)
    _rm(root / DELETED_DIR)
    for child in (root / EMPTIED_DIR).iterdir():
        _rm(child)
    app = root / "opt/app"
    _write(app / "bin/tool", "#!/bin/sh\necho tool\n", 0o755)
    os.link(app / "bin/tool", app / "bin/tool-hl")
    _write(app / "bin/suid", b"\x7fELF setuid\n", 0o4755)
    _write(app / "bin/sgid", b"\x7fELF setgid\n", 0o2755)
    (app / "scratch").mkdir()
    os.chmod(app / "scratch", 0o1777)
    # A chain: /usr/local/bin/tool -> ../../../opt/app/current/tool, current -> v1, v1 -> /opt/app/bin.
    os.symlink("/opt/app/bin", app / "v1")
    os.symlink("v1", app / "current")
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    os.symlink("../../../opt/app/current/tool", root / "usr/local/bin/tool")
    os.symlink("/opt/app/missing", app / "dangling")
    # A new name for a lower-layer file.
    os.link(root / "etc/passwd", app / "passwd-hl")
    # Type changes: file -> dir, dir -> file, dir -> symlink; a mode-only change.
    _rm(root / "etc/issue.net")
    _write(root / "etc/issue.net/inside", "was a file\n")
    _rm(root / "usr/share/doc/apt")
    _write(root / "usr/share/doc/apt", "was a directory\n")
    _rm(root / "usr/share/doc/base-files")
    os.symlink("apt", root / "usr/share/doc/base-files")
    os.chmod(root / "etc/hostname", 0o600)


def apply_v3(root: Path) -> None:
    """Layer 2: re-adds what layer 1 deleted; deletes the first name of a hardlinked file."""
    _write(root / DELETED_FILE, "re-added in v3\n")
    _write(root / DELETED_DIR / "README.v3", "bash docs re-created in v3\n")
    _rm(root / "opt/app/bin/tool")  # tool-hl keeps the content


def opaque_layer_tar() -> bytes:
    """Layer 3 (umoci repack writes no opaque markers): empties OPAQUE_DIR with '.wh..wh..opq' and adds new
    content in the same layer (listed before the marker, which must not hide it); whiteouts a file and the
    emptied directory; a hardlink inside the layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(
            name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, linkname: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, 1_700_000_000
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add(f"{OPAQUE_DIR}/", tarfile.DIRTYPE, mode=0o755)
        add(f"{OPAQUE_DIR}/UTC", data=b"TZif opaque layer UTC\n")
        add(f"{OPAQUE_DIR}/Etc/", tarfile.DIRTYPE, mode=0o755)
        add(f"{OPAQUE_DIR}/Etc/UTC", tarfile.LNKTYPE, linkname=f"{OPAQUE_DIR}/UTC")
        add(f"{OPAQUE_DIR}/.wh..wh..opq", mode=0o000)
        add("etc/.wh.hostname", mode=0o000)
        add(f"{os.path.dirname(EMPTIED_DIR)}/.wh.{os.path.basename(EMPTIED_DIR)}", mode=0o000)
    return buf.getvalue()


@dataclass
class Layout:
    """An OCI image layout on disk; expected_tree(tag) unpacks a tag with umoci once, on first use."""

    path: Path
    tags: list[str]
    work: Path
    _expected: dict[str, dict[str, tuple]] = field(default_factory=dict, repr=False)

    def expected_tree(self, tag: str | None = None) -> dict[str, tuple]:
        """What `umoci unpack` makes of `tag` (default: the only tag), as a host_tree."""
        tag = tag or self.only_tag()
        if tag not in self._expected:
            self._expected[tag] = unpacked_tree(self.path, tag, self.work)
        return self._expected[tag]

    def only_tag(self) -> str:
        assert len(self.tags) == 1, self.tags
        return self.tags[0]

    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    def blob(self, digest: str) -> bytes:
        algo, hexdigest = digest.split(":", 1)
        return (self.path / "blobs" / algo / hexdigest).read_bytes()

    def manifest_digest(self, tag: str | None = None) -> str:
        """The manifest digest of `tag` (or of the only manifest)."""
        manifests = self.index()["manifests"]
        if tag is None:
            assert len(manifests) == 1, manifests
            return manifests[0]["digest"]
        for m in manifests:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return m["digest"]
        raise KeyError(tag)

    def manifest(self, tag: str | None = None) -> dict:
        return json.loads(self.blob(self.manifest_digest(tag)))

    def config(self, tag: str | None = None) -> dict:
        return json.loads(self.blob(self.manifest(tag)["config"]["digest"]))


def unpacked_tree(layout: Path, tag: str, work: Path) -> dict[str, tuple]:
    """The oracle: what `umoci unpack` makes of one tag, as a host_tree."""
    bundle = Path(tempfile.mkdtemp(dir=work, prefix=f"expect-{tag}-"))
    shutil.rmtree(bundle)
    try:
        run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle])
        return host_tree(str(bundle / "rootfs"))
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def unpack_rootfs(layout: Path, tag: str, dest: Path) -> Path:
    """`umoci unpack` one tag and return its rootfs (for the dir: source)."""
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", dest])
    return dest / "rootfs"


def build_umoci_layout(
    base_tar: Path, layout: Path, work: Path, timings: dict[str, float] | None = None
) -> Layout:
    """The four-tag image: base (the rootfs), v2 and v3 (umoci repack diffs), v4 (opaque layer, raw add)."""
    bundle = work / "bundle"
    with timed("umoci-base", timings):
        run(["umoci", "init", "--layout", layout])
        run(["umoci", "new", "--image", f"{layout}:empty"])
        run(
            [
                "umoci",
                "config",
                "--image",
                f"{layout}:empty",
                "--tag",
                "empty",
                "--config.env",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "--config.cmd",
                "/bin/sh",
            ]
        )
        run(["umoci", "unpack", "--image", f"{layout}:empty", bundle])
        extract_tarball(base_tar, bundle / "rootfs")
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", bundle])
    with timed("umoci-v2-v3", timings):
        apply_v2(bundle / "rootfs")
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:v2", bundle])
        apply_v3(bundle / "rootfs")
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:v3", bundle])
    with timed("umoci-v4", timings):
        layer = work / "opaque-layer.tar"
        layer.write_bytes(opaque_layer_tar())
        run(["umoci", "raw", "add-layer", "--image", f"{layout}:v3", "--tag", "v4", layer])
        run(["umoci", "rm", "--image", f"{layout}:empty"])
        run(["umoci", "gc", "--layout", layout])
    shutil.rmtree(bundle)
    return Layout(layout, list(UMOCI_TAGS), work)


# --------------------------------------------------------------------------------------------------------
# skopeo conversions


def skopeo_copy(src: str, dest: str, *extra: str) -> None:
    run(["skopeo", "copy", "--quiet", *extra, src, dest])


def oci_archive(layout: Path, tag: str, archive: Path) -> Path:
    """`skopeo copy oci:L:tag oci-archive:F:tag`: an oci-archive holding one tagged image."""
    skopeo_copy(f"oci:{layout}:{tag}", f"oci-archive:{archive}:{tag}")
    return archive


def docker_archive(layout: Path, tag: str, archive: Path, repo_tag: str = DOCKER_REPO_TAG) -> Path:
    """`skopeo copy oci:L:tag docker-archive:F:repo:tag`: uncompressed layers, manifest.json."""
    skopeo_copy(f"oci:{layout}:{tag}", f"docker-archive:{archive}:{repo_tag}")
    return archive


def zstd_layout(layout: Path, tag: str, dest: Path) -> Path:
    """A single-image copy whose layers skopeo recompresses with zstd (same diff_ids)."""
    skopeo_copy(f"oci:{layout}:{tag}", f"oci:{dest}:{tag}", "--dest-compress-format", "zstd")
    return dest


def uncompressed_layout(layout: Path, tag: str, dest: Path, work: Path) -> Path:
    """A single-image copy with plain tar layers (media type ...layer.v1.tar), via skopeo's dir: transport."""
    tmp = Path(tempfile.mkdtemp(dir=work, prefix="dir-"))
    shutil.rmtree(tmp)
    skopeo_copy(f"oci:{layout}:{tag}", f"dir:{tmp}", "--dest-decompress")
    skopeo_copy(f"dir:{tmp}", f"oci:{dest}:{tag}", "--dest-oci-accept-uncompressed-layers")
    shutil.rmtree(tmp)
    return dest


# --------------------------------------------------------------------------------------------------------
# buildah

BUILDAH_DOCKERFILE = f"""\
FROM scratch
ADD rootfs.tar /
RUN rm -rf /{DELETED_FILE} /{DELETED_DIR} /etc/issue.net
RUN rm -rf /{OPAQUE_DIR}/* /{EMPTIED_DIR}/*
RUN mkdir -p /opt/app /{OPAQUE_DIR}/Etc && echo hello > /opt/app/hello \\
 && ln /opt/app/hello /opt/app/hello-hl && ln -s hello /opt/app/hello-sl && chmod 4755 /opt/app/hello \\
 && echo re-added > /{DELETED_FILE} && echo new > /{OPAQUE_DIR}/Etc/UTC
"""
BUILDAH_TAG = "t"


def buildah_layout(
    base_tar: Path, layout: Path, work: Path, timings: dict[str, float] | None = None
) -> Layout:
    """`buildah bud` (chroot isolation, vfs, private storage) of BUILDAH_DOCKERFILE, pushed to an OCI layout
    with one layer per step; also pushed as a docker-archive beside it (layout.with_suffix('.docker.tar'))."""
    ctx = work / "buildah-ctx"
    ctx.mkdir()
    shutil.copy(base_tar, ctx / "rootfs.tar")
    (ctx / "Dockerfile").write_text(BUILDAH_DOCKERFILE)
    storage = ["--storage-driver", "vfs", "--root", work / "buildah-root", "--runroot", work / "buildah-run"]
    env = dict(os.environ, TMPDIR=str(work), BUILDAH_ISOLATION="chroot")
    try:
        with timed("buildah-bud", timings):
            run(
                [
                    "buildah",
                    *storage,
                    "bud",
                    "--isolation",
                    "chroot",
                    "--layers",
                    "-t",
                    BUILDAH_TAG,
                    "-f",
                    ctx / "Dockerfile",
                    ctx,
                ],
                env=env,
            )
        with timed("buildah-push", timings):
            run(["buildah", *storage, "push", "--quiet", BUILDAH_TAG, f"oci:{layout}:{BUILDAH_TAG}"], env=env)
            run(
                [
                    "buildah",
                    *storage,
                    "push",
                    "--quiet",
                    BUILDAH_TAG,
                    f"docker-archive:{layout.with_suffix('.docker.tar')}:{DOCKER_REPO_TAG}",
                ],
                env=env,
            )
    finally:
        with contextlib.suppress(BuildError):
            run(["buildah", *storage, "rmi", "--all", "--force"], env=env)
        shutil.rmtree(work / "buildah-root", ignore_errors=True)
        shutil.rmtree(work / "buildah-run", ignore_errors=True)
        shutil.rmtree(ctx, ignore_errors=True)
    return Layout(layout, [BUILDAH_TAG], work)


def layer_members(layout: Layout, tag: str | None = None) -> list[list[tarfile.TarInfo]]:
    """The tar members of every layer of a tag, lowest first (what the tool wrote: whiteouts, markers)."""
    out = []
    for desc in layout.manifest(tag)["layers"]:
        algo, hexdigest = desc["digest"].split(":", 1)
        with open(layout.path / "blobs" / algo / hexdigest, "rb") as f:
            if desc["mediaType"].endswith("zstd"):
                import zstandard

                z = zstandard.ZstdDecompressor().stream_reader(f)
                with tarfile.open(fileobj=z, mode="r|") as t:
                    out.append(list(t))
            else:
                with tarfile.open(fileobj=f, mode="r|*") as t:
                    out.append(list(t))
    return out


def last_writer(layout: Layout, tag: str | None = None) -> dict[str, int]:
    """{path: index of the last layer with a (non-whiteout) entry for it}: the layer a merged view should
    report for a file, symlink or hardlink that survives to the final tree."""
    result: dict[str, int] = {}
    for index, members in enumerate(layer_members(layout, tag)):
        for m in members:
            path = os.path.normpath("/" + m.name).lstrip("/")
            if not os.path.basename(path).startswith(".wh."):
                result[path] = index
    return result


# --------------------------------------------------------------------------------------------------------
# the whole set built from one base rootfs

FINAL_TAG = "v4"


@dataclass
class ImageSet:
    """Every image built from one base rootfs. Expected trees: the umoci layout's (zstd, plain, oci-archive
    and docker-archive copies of FINAL_TAG share it) and the buildah layout's (its docker-archive too)."""

    name: str
    umoci: Layout  # tags UMOCI_TAGS
    oci_archive: Path  # FINAL_TAG, tagged FINAL_TAG inside
    docker_archive: Path  # FINAL_TAG as DOCKER_REPO_TAG
    zstd: Layout  # FINAL_TAG only, zstd layers
    plain: Layout  # FINAL_TAG only, uncompressed layers
    rootfs_dir: Path  # FINAL_TAG unpacked by umoci (for the dir: source)
    buildah: Layout | None = None
    buildah_docker_archive: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def build_image_set(name: str, base_tar: Path, work: Path, with_buildah: bool = True) -> ImageSet:
    """Build the umoci layout, its skopeo copies, an unpacked rootfs and (optionally) the buildah image."""
    t: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    with timed("total", t):
        lay = build_umoci_layout(base_tar, work / "layout", work, t)
        with timed("skopeo", t):
            oci = oci_archive(lay.path, FINAL_TAG, work / "oci-archive.tar")
            docker = docker_archive(lay.path, FINAL_TAG, work / "docker-archive.tar")
            zstd = Layout(zstd_layout(lay.path, FINAL_TAG, work / "zstd"), [FINAL_TAG], work)
            plain = Layout(uncompressed_layout(lay.path, FINAL_TAG, work / "plain", work), [FINAL_TAG], work)
        zstd._expected[FINAL_TAG] = plain._expected[FINAL_TAG] = lay.expected_tree(FINAL_TAG)
        rootfs = unpack_rootfs(lay.path, FINAL_TAG, work / "unpacked")
        images = ImageSet(name, lay, oci, docker, zstd, plain, rootfs, timings=t)
        if with_buildah:
            images.buildah = buildah_layout(base_tar, work / "buildah", work, t)
            images.buildah_docker_archive = images.buildah.path.with_suffix(".docker.tar")
    return images


# --------------------------------------------------------------------------------------------------------
# standalone: build everything once, print timings


def build_all(work: Path, with_debootstrap: bool, log: Callable[[str], None] = print) -> dict[str, float]:
    """Build every fixture image under `work`; return {step: seconds}."""
    timings: dict[str, float] = {}
    bases = {}
    with timed("mini-rootfs", timings):
        mini = build_mini_rootfs(work / "mini-rootfs")
        bases["mini"] = tar_rootfs(mini, work / "mini-rootfs.tar")
        shutil.rmtree(mini)
    if with_debootstrap:
        with timed("debootstrap-cached", timings):
            bases["deb"] = debootstrap_tarball(timings=timings)
    for name, base in bases.items():
        images = build_image_set(name, base, work / name)
        for k, v in images.timings.items():
            timings[f"{name}:{k}"] = v
        assert images.buildah is not None
        for i, members in enumerate(layer_members(images.buildah)):
            marks = [m.name for m in members if ".wh." in m.name]
            log(f"{name}: buildah layer {i}: {len(members)} entries, {len(marks)} whiteouts {marks[:5]}")
    return timings


def main(argv: list[str]) -> int:
    with_deb = "--debootstrap" in argv
    args = [a for a in argv if not a.startswith("--")]
    work = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="imgscan-build-"))
    work.mkdir(parents=True, exist_ok=True)
    timings = build_all(work, with_deb)
    for k, v in timings.items():
        print(f"{k:32s} {v:7.1f} s")
    print(f"built under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
