"""Test images for the ld.so emulation: gcc-built objects that exercise every search rule, in umoci layers.

The crafted image (`build_crafted`) is the debootstrap rootfs (layer 0) plus two layers of objects compiled
here with gcc; its config Env sets LD_LIBRARY_PATH. CRAFTED_EDGES names, for each rule, one edge and what
the real ld.so resolves it to (the oracle checks the table itself, so a wrong expectation fails loudly).
Everything is small: the whole build takes about 20 s (2 cores) and is not cached.

The torch tier (`build_torch`) is the real torch 2.14.1 wheel and the nvidia wheels it pins, unzipped into
/usr/local/lib/python3.11/dist-packages of the debootstrap rootfs (two layers: nvidia, then torch). It is
~5 GB unpacked; the OCI layout is cached under CACHE_DIR keyed by the wheels' sha256 (as pip reports them).

Run standalone to build and print timings:  python -m tests.linker_images [--torch] [WORKDIR]
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests import imagebuild
from tests.imagebuild import CACHE_DIR, run, timed

CRAFTED_TAG = "v2"  # tags: base (debootstrap), v1 (objects + ldconfig), v2 (deletions, uncached additions)
CRAFTED_LLP = "/opt/t/llp:/opt/t/llp2"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EM_AARCH64 = 183
LD_SO_CONF = "/etc/ld.so.conf.d/imgscan-test.conf"
CONF_DIRS = ("/opt/t/conf", "/opt/t/conf2", "/opt/t/conf32", "/opt/t/stale", "/usr/lib/imgscan-sub")


# --------------------------------------------------------------------------------------------------------
# object specs


@dataclass(frozen=True)
class Obj:
    """One ELF object to compile and place at `dest` in the image.

    kind: 'lib' (x86-64 shared object), 'exe' (PIE executable), 'lib32' (ELFCLASS32 i386 shared object),
    'arm' (x86-64 object whose e_machine is patched to AArch64), 'static' (static executable).
    needed: DT_NEEDED names in order (libc.so.6 is appended by gcc for lib and exe).
    rpath/runpath: written as DT_RPATH / DT_RUNPATH (never both). soname: default the file name for libs.
    """

    dest: str
    kind: str = "lib"
    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: str | None = None
    runpath: str | None = None
    nodeflib: bool = False
    mode: int = 0o755
    gid: int = 0

    def real_soname(self) -> str | None:
        if self.kind in ("exe", "static"):
            return None
        return self.soname or os.path.basename(self.dest)


@dataclass(frozen=True)
class Symlink:
    dest: str
    target: str


@dataclass(frozen=True)
class Text:
    dest: str
    text: str


@dataclass(frozen=True)
class Remove:
    dest: str


Item = Obj | Symlink | Text | Remove

HWL = "/opt/t/hw/lib"
GH = "glibc-hwcaps"

# Layer 1: every case's objects, the ld.so.conf.d entry; then ldconfig runs in the rootfs.
LAYER1: tuple[Item, ...] = (
    # --- RPATH chain: the executable's DT_RPATH is inherited by everything it loads (unless RUNPATH) ---
    Obj(
        "/opt/t/rpath/bin/rpath-exe",
        "exe",
        ("libra.so.1", "libboth2.so.1", "libmixed-rp.so.1", "librpchild.so.1"),
        rpath="$ORIGIN/../a:/opt/t/rpath/b",
    ),
    Obj("/opt/t/rpath/a/libra.so.1", needed=("librb.so.1",)),
    Obj("/opt/t/rpath/b/librb.so.1", needed=("librc.so.1",), rpath="/opt/t/rpath/c"),
    Obj("/opt/t/rpath/c/librc.so.1", needed=("librd.so.1", "libcuda.so.1")),
    Obj("/opt/t/rpath/b/librc.so.1"),  # decoy: librb's own RPATH (c) comes before the exe's (b)
    Obj("/opt/t/rpath/b/librd.so.1"),  # only through the exe's RPATH, three loaders up
    Obj("/opt/t/rpath/a/libboth2.so.1"),  # RPATH beats LD_LIBRARY_PATH ...
    Obj("/opt/t/llp/libboth2.so.1"),  # ... which has this one
    Obj("/opt/t/rpath/a/libmixed-rp.so.1", "lib32"),  # wrong class first in the RPATH list: skipped
    Obj("/opt/t/rpath/b/libmixed-rp.so.1"),
    # a RUNPATH object below an RPATH exe: no RPATH at all for its requests (librd2 is only in exe's RPATH)
    Obj("/opt/t/rpath/a/librpchild.so.1", needed=("librd2.so.1",), runpath="/opt/t/nowhere"),
    Obj("/opt/t/rpath/b/librd2.so.1"),
    # --- RUNPATH: not inherited; LD_LIBRARY_PATH beats it ---
    Obj(
        "/opt/t/runpath/bin/runpath-exe",
        "exe",
        ("librun1.so.1", "libboth.so.1", "libllp.so.1", "libmixed.so.1"),
        runpath="/opt/t/runpath/lib",
    ),
    Obj("/opt/t/runpath/lib/librun1.so.1", needed=("librun2.so.1", "librun3.so.1")),
    Obj("/opt/t/runpath/lib/librun2.so.1"),  # only in the exe's RUNPATH: not found for librun1
    Obj("/opt/t/runpath/lib/librun3.so.1"),  # also in /usr/local/lib (ldconfig'd): found there
    Obj("/usr/local/lib/librun3.so.1"),
    Obj("/opt/t/runpath/lib/libboth.so.1"),
    Obj("/opt/t/llp/libboth.so.1"),  # LD_LIBRARY_PATH wins over RUNPATH
    Obj("/opt/t/llp/libllp.so.1"),
    Obj(f"/opt/t/llp/{GH}/x86-64-v3/libllp.so.1"),  # hwcaps subdirs apply to LD_LIBRARY_PATH dirs too
    Obj("/opt/t/llp/libmixed.so.1", "lib32"),  # skipped: ELFCLASS32
    Obj("/opt/t/llp2/libmixed.so.1", "arm"),  # skipped: e_machine AArch64
    Obj("/opt/t/runpath/lib/libmixed.so.1"),
    # --- $ORIGIN through symlinks: /opt/t/app -> app-1.0; lib2 -> ../shared/lib; a lib linked across dirs ---
    Symlink("/opt/t/app", "app-1.0"),
    Obj(
        "/opt/t/app-1.0/bin/app-exe",
        "exe",
        ("libapp.so.1", "libvend.so.1", "libshr.so.1"),
        runpath="$ORIGIN/../lib:$ORIGIN/../lib2",
    ),
    Obj(
        "/opt/t/app-1.0/lib/libapp.so.1.2",
        soname="libapp.so.1",
        needed=("libapphelper.so.1",),
        runpath="${ORIGIN}",
    ),
    Symlink("/opt/t/app-1.0/lib/libapp.so.1", "libapp.so.1.2"),
    Obj("/opt/t/app-1.0/lib/libapphelper.so.1"),
    Obj("/opt/t/vendor/lib/libvend.so.1", needed=("libvdep.so.1",), runpath="$ORIGIN/../deps"),
    Symlink("/opt/t/app-1.0/lib/libvend.so.1", "../../vendor/lib/libvend.so.1"),
    Obj("/opt/t/app-1.0/deps/libvdep.so.1"),  # $ORIGIN = dir of the path opened (what ld.so does)
    Obj("/opt/t/vendor/deps/libvdep.so.1"),  # $ORIGIN = dir of the realpath (what it does not)
    Symlink("/opt/t/app-1.0/lib2", "../shared/lib"),
    Obj("/opt/t/shared/lib/libshr.so.1", needed=("libsdep.so.1",), runpath="$ORIGIN/../deps"),
    Obj("/opt/t/shared/deps/libsdep.so.1"),  # '..' after the lib2 symlink: physical, not lexical
    Symlink("/usr/local/bin/app-tool", "/opt/t/app/bin/app-exe"),
    # --- $LIB and $PLATFORM ---
    Obj("/opt/t/tok/bin/toklib-exe", "exe", ("libtoklib.so.1",), rpath="/opt/t/tok/$LIB"),
    Obj("/opt/t/tok/lib/x86_64-linux-gnu/libtoklib.so.1"),  # Debian's $LIB
    Obj("/opt/t/tok/lib64/libtoklib.so.1"),  # Fedora's $LIB (decoy)
    Obj(
        "/opt/t/tok/bin/tokplat-exe",
        "exe",
        ("libtokplat.so.1",),
        runpath="/opt/t/tok/${PLATFORM}:/opt/t/tok/none",
    ),
    Obj("/opt/t/tok/x86_64/libtokplat.so.1"),
    Obj("/opt/t/tok/haswell/libtokplat.so.1"),
    Obj("/opt/t/tok/xeon_phi/libtokplat.so.1"),
    # --- ld.so.conf.d + ldconfig'd cache; stale entries (layer 2 deletes the files); NEEDED by file name ---
    Text(LD_SO_CONF, "".join(d + "\n" for d in CONF_DIRS)),
    Obj(
        "/opt/t/cache/bin/cache-exe",
        "exe",
        (
            "libconf.so.1",
            "libstale.so.1",
            "libstale2.so.1",
            "libconfdup.so.1",
            "libconf-file.so",
            "libc32only.so.1",
            "libhwc.so.1",
            "libdefonly.so.1",
            "libdefonly2.so.1",
            "libz.so.1",
            "libsub.so.1",
        ),
    ),
    Obj("/opt/t/conf/libconf.so.1"),
    Obj("/opt/t/stale/libstale.so.1"),  # cached, deleted in layer 2; /usr/lib has one then (default dirs)
    Obj("/opt/t/stale/libstale2.so.1"),  # cached, deleted in layer 2, nowhere else: not found
    Obj("/opt/t/conf/libconfdup.so.1"),  # in two ld.so.conf dirs: the cache's order decides
    Obj("/opt/t/conf2/libconfdup.so.1"),
    Obj("/opt/t/conf/libconf-file.so", soname="libconf-real.so.1"),  # cached under its SONAME only
    Obj("/opt/t/conf32/libc32only.so.1", "lib32"),  # cached with the i386 flags: skipped by ld.so
    Obj("/opt/t/conf2/libc32only.so.1"),
    Obj("/usr/lib/imgscan-sub/libsub.so.1"),  # cached; under /usr/lib/, so NODEFLIB skips its entry
    Obj("/usr/local/lib/libhwc.so.1"),  # cached with the hwcaps extension
    Obj(f"/usr/local/lib/{GH}/x86-64-v2/libhwc.so.1"),
    Obj(f"/usr/local/lib/{GH}/x86-64-v3/libhwc.so.1"),
    # --- glibc-hwcaps and legacy hwcap subdirs (glibc 2.36 still searches tls/, x86_64/, haswell/ ...) ---
    Obj(
        "/opt/t/hw/bin/hw-exe",
        "exe",
        ("libhw.so.1", "libhw2.so.1", "libhw4.so.1", "libhwgone.so.1", "liblegacy.so.1", "liblegacy2.so.1"),
        runpath=HWL,
    ),
    Obj(f"{HWL}/libhw.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v2/libhw.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v3/libhw.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v4/libhw.so.1"),
    Obj(f"{HWL}/libhw2.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v2/libhw2.so.1"),
    Obj(f"{HWL}/libhw4.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v4/libhw4.so.1"),
    Obj(f"{HWL}/libhwgone.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v2/libhwgone.so.1"),
    Obj(f"{HWL}/{GH}/x86-64-v3/libhwgone.so.1"),  # deleted in layer 2
    Obj(f"{HWL}/{GH}/x86-64-v4/libhwgone.so.1"),  # deleted in layer 2
    Obj(f"{HWL}/liblegacy.so.1"),
    Obj(f"{HWL}/tls/liblegacy.so.1"),
    Obj(f"{HWL}/x86_64/liblegacy.so.1"),
    Obj(f"{HWL}/liblegacy2.so.1"),
    Obj(f"{HWL}/x86_64/liblegacy2.so.1"),
    # --- DF_1_NODEFLIB: default dirs and cache entries *in system dirs* skipped; other cache entries used ---
    Obj(
        "/opt/t/nodeflib/bin/nodeflib-exe",
        "exe",
        ("libnd.so.1", "libconf.so.1", "libz.so.1", "libdefonly.so.1", "libsub.so.1"),
        runpath="/opt/t/nodeflib/lib",
        nodeflib=True,
    ),
    Obj("/opt/t/nodeflib/lib/libnd.so.1", needed=("libz.so.1",)),  # libnd is not NODEFLIB: finds libz
    # --- one SONAME twice under two NEEDED names; reuse by SONAME; the same file under two names ---
    Obj(
        "/opt/t/dup/bin/dup-exe",
        "exe",
        ("libdup-a.so", "libdup-b.so", "libfirst.so", "libsame-a.so", "libsame-b.so", "libdupuser.so.1"),
        rpath="/opt/t/dup/a:/opt/t/dup/b",
    ),
    Obj("/opt/t/dup/a/libdup-a.so", soname="libdup.so.1"),
    Obj("/opt/t/dup/b/libdup-b.so", soname="libdup.so.1"),  # a second object with the same SONAME
    Obj("/opt/t/dup/a/libfirst.so", soname="libsoname-x.so.1"),
    Obj("/opt/t/dup/b/libsoname-x.so.1"),  # never loaded: libsoname-x.so.1 is libfirst.so's SONAME
    Obj("/opt/t/dup/a/libsame-a.so", soname="libsame.so.1"),
    Symlink("/opt/t/dup/a/libsame-b.so", "libsame-a.so"),  # same file: reused, not loaded twice
    Obj("/opt/t/dup/a/libdupuser.so.1", needed=("libdup.so.1", "libsoname-x.so.1")),
    # --- NEEDED with a '/': used as a path ---
    Obj(
        "/opt/t/direct/bin/direct-exe",
        "exe",
        ("/opt/t/direct/lib/libdirect.so", "/opt/t/direct/lib/missing.so", "libdirdep.so.1"),
    ),
    Obj("/opt/t/direct/lib/libdirect.so", needed=("libdirdep.so.1",), runpath="$ORIGIN"),
    Obj("/opt/t/direct/lib/libdirdep.so.1"),
    # --- setuid-root, setgid executables (run by root, only setgid is AT_SECURE: LD_LIBRARY_PATH ignored) ---
    Obj("/opt/t/suid/bin/suid-exe", "exe", ("libsecure.so.1",), mode=0o4755),
    Obj("/opt/t/suid/bin/sgid-exe", "exe", ("libsecure.so.1",), mode=0o2755, gid=50),
    Obj("/opt/t/llp/libsecure.so.1"),
    Obj("/opt/t/conf/libsecure.so.1"),
    # --- not dynamically linked; not ELF x86-64 ---
    Obj("/opt/t/misc/static-exe", "static"),
    Obj("/opt/t/misc/lib32-only.so", "lib32"),
    Obj("/opt/t/misc/libarm-only.so", "arm", needed=("libc.so.6",)),
)

# Layer 2 (no ldconfig): stale cache entries, libraries only in default dirs, a whiteout in a hwcaps dir.
LAYER2: tuple[Item, ...] = (
    Remove("/opt/t/stale/libstale.so.1"),
    Remove("/opt/t/stale/libstale2.so.1"),
    Obj("/usr/lib/libstale.so.1"),
    Obj("/usr/lib/libdefonly.so.1"),
    Obj("/usr/lib/x86_64-linux-gnu/libdefonly2.so.1"),  # merged /usr: ld.so prints /lib/x86_64-linux-gnu/...
    Remove(f"{HWL}/{GH}/x86-64-v3/libhwgone.so.1"),
    Remove(f"{HWL}/{GH}/x86-64-v4/libhwgone.so.1"),
)


@dataclass(frozen=True)
class Edge:
    """One expected edge of the crafted image: root object, NEEDED name -> printed path (None: not found),
    the rule, and for 'rpath' the object whose RPATH matched. Placeholders in path: {platform} (ld.so's
    $PLATFORM on this CPU), {level} (highest glibc-hwcaps level searched). The oracle must agree."""

    case: str
    obj: str
    name: str
    path: str | None
    rule: str
    via: str | None = None


RPATH_EXE = "/opt/t/rpath/bin/rpath-exe"
RUNPATH_EXE = "/opt/t/runpath/bin/runpath-exe"
APP_EXE = "/opt/t/app-1.0/bin/app-exe"
CACHE_EXE = "/opt/t/cache/bin/cache-exe"
HW_EXE = "/opt/t/hw/bin/hw-exe"
ND_EXE = "/opt/t/nodeflib/bin/nodeflib-exe"
DUP_EXE = "/opt/t/dup/bin/dup-exe"
LIBX = "/lib/x86_64-linux-gnu"

CRAFTED_EDGES: tuple[Edge, ...] = (
    Edge("rpath-origin", RPATH_EXE, "libra.so.1", "/opt/t/rpath/bin/../a/libra.so.1", "rpath", RPATH_EXE),
    Edge("rpath-inherited", RPATH_EXE, "librb.so.1", "/opt/t/rpath/b/librb.so.1", "rpath", RPATH_EXE),
    Edge(
        "rpath-own-before-loader",
        RPATH_EXE,
        "librc.so.1",
        "/opt/t/rpath/c/librc.so.1",
        "rpath",
        "/opt/t/rpath/b/librb.so.1",
    ),
    Edge("rpath-inherited-3-up", RPATH_EXE, "librd.so.1", "/opt/t/rpath/b/librd.so.1", "rpath", RPATH_EXE),
    Edge(
        "rpath-beats-llp",
        RPATH_EXE,
        "libboth2.so.1",
        "/opt/t/rpath/bin/../a/libboth2.so.1",
        "rpath",
        RPATH_EXE,
    ),
    Edge(
        "rpath-skips-wrong-class",
        RPATH_EXE,
        "libmixed-rp.so.1",
        "/opt/t/rpath/b/libmixed-rp.so.1",
        "rpath",
        RPATH_EXE,
    ),
    Edge("runpath-blocks-rpath-chain", RPATH_EXE, "librd2.so.1", None, "not-found"),
    Edge("host-provided", RPATH_EXE, "libcuda.so.1", None, "host-provided"),
    Edge("runpath", RUNPATH_EXE, "librun1.so.1", "/opt/t/runpath/lib/librun1.so.1", "runpath"),
    Edge("runpath-not-inherited", RUNPATH_EXE, "librun2.so.1", None, "not-found"),
    Edge(
        "runpath-not-inherited-cache",
        RUNPATH_EXE,
        "librun3.so.1",
        "/usr/local/lib/librun3.so.1",
        "ld.so.cache",
    ),
    Edge("llp-beats-runpath", RUNPATH_EXE, "libboth.so.1", "/opt/t/llp/libboth.so.1", "ld_library_path"),
    Edge(
        "llp-hwcaps",
        RUNPATH_EXE,
        "libllp.so.1",
        "/opt/t/llp/glibc-hwcaps/x86-64-v3/libllp.so.1",
        "ld_library_path",
    ),
    Edge("skip-32-and-arm", RUNPATH_EXE, "libmixed.so.1", "/opt/t/runpath/lib/libmixed.so.1", "runpath"),
    Edge("origin", APP_EXE, "libapp.so.1", "/opt/t/app-1.0/bin/../lib/libapp.so.1", "runpath"),
    Edge(
        "origin-braces",
        APP_EXE,
        "libapphelper.so.1",
        "/opt/t/app-1.0/bin/../lib/libapphelper.so.1",
        "runpath",
    ),
    Edge(
        "origin-of-symlinked-lib",
        APP_EXE,
        "libvdep.so.1",
        "/opt/t/app-1.0/bin/../lib/../deps/libvdep.so.1",
        "runpath",
    ),
    Edge(
        "origin-dotdot-physical",
        APP_EXE,
        "libsdep.so.1",
        "/opt/t/app-1.0/bin/../lib2/../deps/libsdep.so.1",
        "runpath",
    ),
    Edge(
        "lib-token",
        "/opt/t/tok/bin/toklib-exe",
        "libtoklib.so.1",
        "/opt/t/tok/lib/x86_64-linux-gnu/libtoklib.so.1",
        "rpath",
        "/opt/t/tok/bin/toklib-exe",
    ),
    Edge(
        "platform-token",
        "/opt/t/tok/bin/tokplat-exe",
        "libtokplat.so.1",
        "/opt/t/tok/{platform}/libtokplat.so.1",
        "runpath",
    ),
    Edge("cache", CACHE_EXE, "libconf.so.1", "/opt/t/conf/libconf.so.1", "ld.so.cache"),
    Edge("stale-cache-then-default", CACHE_EXE, "libstale.so.1", "/lib/libstale.so.1", "default"),
    Edge("stale-cache-not-found", CACHE_EXE, "libstale2.so.1", None, "not-found"),
    Edge("cache-order", CACHE_EXE, "libconfdup.so.1", "/opt/t/conf/libconfdup.so.1", "ld.so.cache"),
    Edge("cache-keys-are-sonames", CACHE_EXE, "libconf-file.so", None, "not-found"),
    Edge(
        "cache-skips-other-arch", CACHE_EXE, "libc32only.so.1", "/opt/t/conf2/libc32only.so.1", "ld.so.cache"
    ),
    Edge(
        "cache-hwcaps",
        CACHE_EXE,
        "libhwc.so.1",
        "/usr/local/lib/glibc-hwcaps/x86-64-v3/libhwc.so.1",
        "ld.so.cache",
    ),
    Edge("default-not-cached", CACHE_EXE, "libdefonly.so.1", "/lib/libdefonly.so.1", "default"),
    Edge("default-first-dir", CACHE_EXE, "libdefonly2.so.1", f"{LIBX}/libdefonly2.so.1", "default"),
    Edge("cache-system", CACHE_EXE, "libz.so.1", f"{LIBX}/libz.so.1", "ld.so.cache"),
    Edge(
        "hwcaps-best", HW_EXE, "libhw.so.1", "/opt/t/hw/lib/glibc-hwcaps/x86-64-{level}/libhw.so.1", "runpath"
    ),
    Edge(
        "hwcaps-v2-only", HW_EXE, "libhw2.so.1", "/opt/t/hw/lib/glibc-hwcaps/x86-64-v2/libhw2.so.1", "runpath"
    ),
    Edge(
        "hwcaps-whiteout",
        HW_EXE,
        "libhwgone.so.1",
        "/opt/t/hw/lib/glibc-hwcaps/x86-64-v2/libhwgone.so.1",
        "runpath",
    ),
    Edge("legacy-tls", HW_EXE, "liblegacy.so.1", "/opt/t/hw/lib/tls/liblegacy.so.1", "runpath"),
    Edge("legacy-x86_64", HW_EXE, "liblegacy2.so.1", "/opt/t/hw/lib/x86_64/liblegacy2.so.1", "runpath"),
    Edge(
        "nodeflib-cache-outside-system-dirs",
        ND_EXE,
        "libconf.so.1",
        "/opt/t/conf/libconf.so.1",
        "ld.so.cache",
    ),
    Edge("nodeflib-default", ND_EXE, "libdefonly.so.1", None, "not-found"),
    Edge("nodeflib-cache-system-dir", ND_EXE, "libz.so.1", None, "not-found"),
    Edge("nodeflib-cache-system-prefix", ND_EXE, "libsub.so.1", None, "not-found"),
    Edge(
        "cache-subdir-of-system-dir",
        CACHE_EXE,
        "libsub.so.1",
        "/usr/lib/imgscan-sub/libsub.so.1",
        "ld.so.cache",
    ),
    Edge("nodeflib-runpath", ND_EXE, "libnd.so.1", "/opt/t/nodeflib/lib/libnd.so.1", "runpath"),
    Edge("dup-soname-a", DUP_EXE, "libdup-a.so", "/opt/t/dup/a/libdup-a.so", "rpath", DUP_EXE),
    Edge("dup-soname-b", DUP_EXE, "libdup-b.so", "/opt/t/dup/b/libdup-b.so", "rpath", DUP_EXE),
    Edge("reuse-by-soname", DUP_EXE, "libfirst.so", "/opt/t/dup/a/libfirst.so", "rpath", DUP_EXE),
    Edge(
        "direct",
        "/opt/t/direct/bin/direct-exe",
        "/opt/t/direct/lib/libdirect.so",
        "/opt/t/direct/lib/libdirect.so",
        "direct",
    ),
    Edge("direct-missing", "/opt/t/direct/bin/direct-exe", "/opt/t/direct/lib/missing.so", None, "not-found"),
    Edge(
        "setuid-root-run-by-root",
        "/opt/t/suid/bin/suid-exe",
        "libsecure.so.1",
        "/opt/t/llp/libsecure.so.1",
        "ld_library_path",
    ),
    Edge(
        "setgid-secure",
        "/opt/t/suid/bin/sgid-exe",
        "libsecure.so.1",
        "/opt/t/conf/libsecure.so.1",
        "ld.so.cache",
    ),
)

# NEEDED names that must not appear in `loads` because an already loaded object satisfies them.
CRAFTED_REUSED: tuple[tuple[str, str], ...] = (
    (DUP_EXE, "libsame-b.so"),  # same file as libsame-a.so
    (DUP_EXE, "libdup.so.1"),  # SONAME of libdup-a.so (the first of the two)
    (DUP_EXE, "libsoname-x.so.1"),  # SONAME of libfirst.so
)


# --------------------------------------------------------------------------------------------------------
# compiling


class Compiler:
    """Compiles Obj specs with the host gcc. NEEDED entries come from link stubs (SONAME = the name)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.stubs = work / "stubs"
        self.src = work / "src"
        self.stubs.mkdir(parents=True, exist_ok=True)
        self.src.mkdir(parents=True, exist_ok=True)
        self._stub_paths: dict[str, Path] = {}
        self._m32: bool | None = None

    def stub(self, name: str) -> Path:
        """A tiny shared object whose SONAME is `name`: linking it writes DT_NEEDED `name`."""
        if name not in self._stub_paths:
            path = self.stubs / f"stub{len(self._stub_paths)}.so"
            c = self.src / f"{path.stem}.c"
            c.write_text("int imgscan_stub;\n")
            run(["gcc", "-shared", "-fPIC", "-nostdlib", "-o", path, c, f"-Wl,-soname,{name}"])
            self._stub_paths[name] = path
        return self._stub_paths[name]

    def m32_works(self) -> bool:
        """Can gcc emit an i386 shared object here (no multilib needed with -nostdlib)?"""
        if self._m32 is None:
            c = self.src / "m32.c"
            c.write_text("int x;\n")
            proc = subprocess.run(
                [
                    "gcc",
                    "-m32",
                    "-shared",
                    "-fPIC",
                    "-nostdlib",
                    "-ffreestanding",
                    "-o",
                    self.src / "m32.so",
                    c,
                ],
                capture_output=True,
                check=False,
            )
            self._m32 = proc.returncode == 0
        return self._m32

    def compile(self, obj: Obj, out: Path) -> None:
        """Build `obj` at host path `out`."""
        ident = re.sub(r"[^A-Za-z0-9]", "_", obj.dest)
        c = self.src / f"{ident}.c"
        body = f'const char imgscan_object_{ident}[] = "{obj.dest}";\n'
        if obj.kind in ("exe", "static"):
            body += "int main(void) { return 0; }\n"
        c.write_text(body)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd: list[str | Path] = ["gcc", "-O0", "-o", out, c]
        if obj.kind == "static":
            cmd.append("-static")
        elif obj.kind == "lib32" and self.m32_works():
            cmd += ["-m32", "-shared", "-fPIC", "-nostdlib", "-ffreestanding"]
        elif obj.kind in ("lib", "lib32", "arm"):
            cmd += ["-shared", "-fPIC"]
        soname = obj.real_soname()
        if soname:
            cmd.append(f"-Wl,-soname,{soname}")
        if obj.needed:
            cmd.append("-Wl,--no-as-needed")
            cmd += [self.stub(n) for n in obj.needed]
        if obj.rpath is not None:
            cmd.append(f"-Wl,--disable-new-dtags,-rpath,{obj.rpath}")
        if obj.runpath is not None:
            cmd.append(f"-Wl,--enable-new-dtags,-rpath,{obj.runpath}")
        if obj.nodeflib:
            cmd.append("-Wl,-z,nodefaultlib")
        run(cmd)
        if obj.kind == "arm":
            patch_machine(out, EM_AARCH64)
        elif obj.kind == "lib32" and not self.m32_works():
            patch_class32(out)


def patch_machine(path: Path, machine: int) -> None:
    """Overwrite e_machine (offset 18, little-endian u16): ld.so then skips the file for x86-64."""
    with open(path, "r+b") as f:
        f.seek(18)
        f.write(machine.to_bytes(2, "little"))


def patch_class32(path: Path) -> None:
    """Make a 64-bit object claim ELFCLASS32 (fallback when gcc -m32 is unavailable)."""
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"\x01")


def apply_items(root: Path, items: Iterable[Item], compiler: Compiler) -> None:
    """Write a layer's items into the rootfs (objects compiled in parallel, owners/modes set)."""
    items = list(items)
    objs = [i for i in items if isinstance(i, Obj)]
    for it in items:
        if isinstance(it, Obj):
            continue
        host = root / it.dest.lstrip("/")
        if isinstance(it, Remove):
            host.unlink()
        elif isinstance(it, Symlink):
            host.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(it.target, host)
        elif isinstance(it, Text):
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_text(it.text)
    for o in objs:  # stubs first, serially (shared cache)
        for n in o.needed:
            compiler.stub(n)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {pool.submit(compiler.compile, o, root / o.dest.lstrip("/")): o for o in objs}
        for fut in concurrent.futures.as_completed(futures):
            o = futures[fut]
            if o.kind == "static" and fut.exception() is not None:
                continue  # no libc.a here: the image just lacks a static executable
            fut.result()
    for o in objs:
        host = root / o.dest.lstrip("/")
        if host.exists():
            os.chown(host, 0, o.gid)
            os.chmod(host, o.mode)


# --------------------------------------------------------------------------------------------------------
# the crafted image


@dataclass
class LinkerImage:
    """An OCI layout built here, its tag, the Env of its config, and where it was unpacked by umoci."""

    name: str
    layout: Path
    tag: str
    env: dict[str, str]
    rootfs: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"oci-dir:{self.layout}:{self.tag}"

    def unpack(self, dest: Path) -> Path:
        """`umoci unpack` the tag once (what the oracle chroots into); returns the rootfs."""
        if self.rootfs is None:
            with timed("unpack", self.timings):
                self.rootfs = imagebuild.unpack_rootfs(self.layout, self.tag, dest)
        return self.rootfs


def _new_layout(layout: Path, bundle: Path, env: dict[str, str], base_tar: Path) -> None:
    """umoci init + an empty image with `env`, unpacked to `bundle` with the base tarball in its rootfs."""
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:empty"])
    cfg = ["umoci", "config", "--image", f"{layout}:empty", "--tag", "empty"]
    for k, v in env.items():
        cfg += ["--config.env", f"{k}={v}"]
    run([*cfg, "--config.cmd", "/bin/sh"])
    run(["umoci", "unpack", "--image", f"{layout}:empty", bundle])
    imagebuild.extract_tarball(base_tar, bundle / "rootfs")


def _finish_layout(layout: Path) -> None:
    run(["umoci", "rm", "--image", f"{layout}:empty"])
    run(["umoci", "gc", "--layout", layout])


def build_crafted(base_tar: Path, work: Path) -> LinkerImage:
    """The crafted linker image: tags base, v1, v2 (CRAFTED_TAG); Env PATH and LD_LIBRARY_PATH."""
    t: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    layout, bundle = work / "layout", work / "bundle"
    env = {"PATH": IMAGE_PATH, "LD_LIBRARY_PATH": CRAFTED_LLP}
    compiler = Compiler(work / "cc")
    with timed("total", t):
        with timed("base", t):
            _new_layout(layout, bundle, env, base_tar)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", bundle])
        root = bundle / "rootfs"
        with timed("layer1", t):
            apply_items(root, LAYER1, compiler)
            run(["chroot", root, "/sbin/ldconfig"])
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:v1", bundle])
        with timed("layer2", t):
            apply_items(root, LAYER2, compiler)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{CRAFTED_TAG}", bundle])
        _finish_layout(layout)
        shutil.rmtree(bundle)
        shutil.rmtree(work / "cc", ignore_errors=True)
    return LinkerImage("crafted", layout, CRAFTED_TAG, env, timings=t)


# --------------------------------------------------------------------------------------------------------
# the torch tier

TORCH_PIN = "torch==2.14.1"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
TORCH_BUILD_VERSION = 1


def _pip_report(reqs: list[str], work: Path) -> list[dict]:
    """`pip install --dry-run --report`: each requirement's wheel URL, sha256 and metadata (no install)."""
    report = work / f"report-{hashlib.sha256(' '.join(reqs).encode()).hexdigest()[:12]}.json"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "--only-binary=:all:",
            "--report",
            report,
            *reqs,
        ]
    )
    return json.loads(report.read_text())["install"]


def _linux_requirements(requires_dist: list[str], extras: set[str]) -> list[tuple[str, str, set[str]]]:
    """(name, specifier, extras) of the Requires-Dist lines that apply on Linux x86-64 CPython 3.11 with
    `extras` requested (the packaging library evaluates the markers)."""
    from packaging.requirements import Requirement

    env = {
        "platform_system": "Linux",
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "python_version": "3.11",
        "python_full_version": "3.11.0",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    out = []
    for line in requires_dist:
        req = Requirement(line)
        if req.marker is not None:
            wanted = ["", *sorted(extras)]
            if not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                continue
        out.append((req.name, str(req.specifier), set(req.extras)))
    return out


def torch_wheel_set(work: Path) -> list[dict]:
    """The torch wheel and every nvidia wheel it pins (directly, and through cuda-toolkit's extras), as pip
    report entries: [{'name', 'url', 'sha256'}], torch first."""
    work.mkdir(parents=True, exist_ok=True)
    (torch,) = _pip_report([TORCH_PIN], work)
    reqs = _linux_requirements(torch["metadata"].get("requires_dist", []), set())
    pins = [f"{n}{s}" for n, s, _ in reqs if n.startswith("nvidia-")]
    toolkit = [(n, s, e) for n, s, e in reqs if n == "cuda-toolkit"]
    for name, spec, extras in toolkit:
        (tk,) = _pip_report([f"{name}{spec}"], work)
        for n, s, _ in _linux_requirements(tk["metadata"].get("requires_dist", []), extras):
            if n.startswith("nvidia-"):
                pins.append(f"{n}{s}")
    pins = sorted(set(pins))
    entries = [torch, *_pip_report(pins, work)]
    return [
        {
            "name": e["metadata"]["name"],
            "version": e["metadata"]["version"],
            "url": e["download_info"]["url"],
            "sha256": e["download_info"]["archive_info"]["hashes"]["sha256"],
        }
        for e in entries
    ]


def torch_cache_key(wheels: list[dict], base_tar: Path) -> str:
    raw = json.dumps([sorted(w["sha256"] for w in wheels), base_tar.name, TORCH_BUILD_VERSION])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _wheel_file(wheel: dict, dest: Path) -> Path:
    """The wheel on disk: a file:// URL is used in place, anything else is fetched by pip download."""
    url = wheel["url"]
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    dest.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            dest,
            f"{wheel['name']}=={wheel['version']}",
        ]
    )
    name = url.rsplit("/", 1)[-1].split("#", 1)[0]
    return dest / name


def _unzip_wheel(path: Path, site: Path) -> None:
    """Install a wheel the way `pip install --no-deps --target` lays it out (files, modes from the zip)."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            target = site / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, mode or 0o644)


def build_torch(base_tar: Path, work: Path) -> LinkerImage:
    """The torch tier, cached under CACHE_DIR/torch-<key>/layout (tag 'torch'); built in a few minutes."""
    t: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    with timed("resolve-wheels", t):
        wheels = torch_wheel_set(work / "pip")
    key = torch_cache_key(wheels, base_tar)
    target = CACHE_DIR / f"torch-{key}"
    env = {"PATH": IMAGE_PATH}
    if not (target / "layout" / "index.json").exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with open(CACHE_DIR / ".lock-torch", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "layout" / "index.json").exists():
                with timed("build", t):
                    _build_torch_layout(base_tar, wheels, target, env, t)
    return LinkerImage("torch", target / "layout", "torch", env, timings=t)


def _build_torch_layout(
    base_tar: Path, wheels: list[dict], target: Path, env: dict[str, str], t: dict[str, float]
) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".build-torch-") as tmp:
        layout, bundle = Path(tmp) / "layout", Path(tmp) / "bundle"
        with timed("build-base", t):
            _new_layout(layout, bundle, env, base_tar)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", bundle])
        site = bundle / "rootfs" / SITE_PACKAGES
        site.mkdir(parents=True, exist_ok=True)
        with timed("build-nvidia", t):
            for w in wheels[1:]:
                _unzip_wheel(_wheel_file(w, Path(tmp) / "wheels"), site)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:nvidia", bundle])
        with timed("build-torch", t):
            _unzip_wheel(_wheel_file(wheels[0], Path(tmp) / "wheels"), site)
            run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:torch", bundle])
        _finish_layout(layout)
        shutil.rmtree(bundle)
        (Path(tmp) / "wheels.json").write_text(json.dumps({"wheels": wheels, "timings": t}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(tmp, target)
        os.mkdir(tmp)  # TemporaryDirectory cleans up the name it made


def torch_objects(rootfs: Path) -> list[str]:
    """Image paths the torch tier compares: every regular file in torch/lib and torch/_C*.so."""
    torch_dir = rootfs / SITE_PACKAGES / "torch"
    paths = sorted(torch_dir.glob("_C*.so")) + sorted(p for p in (torch_dir / "lib").iterdir())
    return ["/" + str(p.relative_to(rootfs)) for p in paths if p.is_file() and not p.is_symlink()]


# --------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    work = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="imgscan-linker-"))
    start = time.monotonic()
    base = imagebuild.debootstrap_tarball()
    images = [build_crafted(base, work / "crafted")]
    if "--torch" in argv:
        images.append(build_torch(base, work / "torch"))
    for img in images:
        img.unpack(work / f"{img.name}-unpacked")
        for k, v in img.timings.items():
            print(f"{img.name}:{k:24s} {v:7.1f} s")
        print(f"{img.name}: {img.ref}  rootfs {img.rootfs}")
    print(f"total {time.monotonic() - start:.1f} s, under {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
