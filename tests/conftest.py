"""Session fixtures: real images built once per session by the real tools (see tests/imagebuild.py).

mini_images: from a small rootfs made of host binaries (seconds); deb_images: from a debootstrap minbase
rootfs, cached as a tarball under ~/.cache/imgscan-tests (about 1 min to build once, then 2-3 min for the
images each session): tests using it are marked slow.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import imagebuild

BUILD_TIMES: dict[str, float] = {}
TOOLS = ("umoci", "skopeo", "buildah", "tar")


def _dev_null_is_device() -> bool:
    try:
        return stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    except OSError:
        return False


@pytest.fixture(autouse=True, scope="module")
def host_dev_null_intact(request: pytest.FixtureRequest) -> Iterator[None]:
    """The tests build and chroot into root filesystems as root: a tool that escapes its root could delete
    the host's /dev/null (seen once while these tests ran). Fail the module that did it, and repair it so
    the rest of the run (and the machine) are not affected."""
    yield
    if not _dev_null_is_device() and os.geteuid() == 0:
        if os.path.lexists("/dev/null"):
            os.unlink("/dev/null")
        os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod("/dev/null", 0o666)
        pytest.fail(f"{request.module.__name__} replaced the host's /dev/null (repaired)", pytrace=False)


def _require_tools(*extra: str) -> None:
    missing = [t for t in (*TOOLS, *extra) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    if os.geteuid() != 0:
        pytest.skip("building and unpacking real images needs root (owners, device nodes)")


def _record(prefix: str, timings: dict[str, float]) -> None:
    for k, v in timings.items():
        BUILD_TIMES[f"{prefix}:{k}"] = v


@pytest.fixture(scope="session")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def mini_rootfs_tar(images_root: Path) -> Path:
    """A tarball of the mini rootfs (host dash and coreutils, synthetic /etc, /usr/share, devices)."""
    _require_tools()
    start = time.monotonic()
    root = imagebuild.build_mini_rootfs(images_root / "mini-rootfs")
    tarball = imagebuild.tar_rootfs(root, images_root / "mini-rootfs.tar")
    shutil.rmtree(root)
    BUILD_TIMES["mini:rootfs"] = time.monotonic() - start
    return tarball


@pytest.fixture(scope="session")
def debootstrap_tar() -> Path:
    """The cached debootstrap minbase tarball (built when absent)."""
    _require_tools("debootstrap")
    timings: dict[str, float] = {}
    path = imagebuild.debootstrap_tarball(timings=timings)
    _record("deb", timings)
    return path


@pytest.fixture(scope="session")
def mini_images(mini_rootfs_tar: Path, images_root: Path) -> imagebuild.ImageSet:
    images = imagebuild.build_image_set("mini", mini_rootfs_tar, images_root / "mini")
    _record("mini", images.timings)
    return images


@pytest.fixture(scope="session")
def deb_images(debootstrap_tar: Path, images_root: Path) -> imagebuild.ImageSet:
    images = imagebuild.build_image_set("deb", debootstrap_tar, images_root / "deb")
    _record("deb", images.timings)
    return images


@pytest.fixture(scope="session")
def image_set(request: pytest.FixtureRequest) -> imagebuild.ImageSet:
    """Indirect parametrisation: request.param is 'mini' or 'deb'."""
    return request.getfixturevalue(f"{request.param}_images")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if BUILD_TIMES:
        terminalreporter.section("real image fixture build times")
        for k, v in BUILD_TIMES.items():
            terminalreporter.write_line(f"{k:32s} {v:7.1f} s")
