"""musl's dynamic linker against the real one: Debian's musl 1.2.3 (apt musl-tools) as an Alpine-style
rootfs (/lib/ld-musl-x86_64.so.1, /etc/ld-musl-x86_64.path), objects built by musl-gcc and given their
NEEDED/RPATH/RUNPATH/SONAME by patchelf. The oracle is `ld-musl-x86_64.so.1 --list PROG` run in a chroot
of that rootfs (musl's ldd mode: found libraries on stdout, missing ones as errors on stderr).

Where musl differs from glibc, and each case below shows it: RUNPATH and RPATH alike are searched up the
whole loader chain after LD_LIBRARY_PATH; the C library's names (libc.*, libpthread.*, libm.*, ...) are the
loader itself; an object is reused by the name it was loaded by, never by SONAME; a '$' other than $ORIGIN
voids the whole RPATH; empty path elements are skipped; /etc/ld-musl-ARCH.path replaces the defaults.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

LDSO = "/lib/ld-musl-x86_64.so.1"
pytestmark = pytest.mark.skipif(
    not (
        shutil.which("musl-gcc") and os.path.exists(LDSO) and shutil.which("patchelf") and os.geteuid() == 0
    ),
    reason="needs musl-tools (apt), patchelf and root (chroot)",
)


@dataclass(frozen=True)
class Obj:
    path: str
    needed: tuple[str, ...] = ()
    rpath: str | None = None  # DT_RPATH
    runpath: str | None = None  # DT_RUNPATH
    soname: str | None = None
    program: bool = False


OBJECTS = [
    # RUNPATH up the chain: libbar (no path) needs libbaz, found through libfoo's RUNPATH (glibc: not found)
    Obj("/usr/lib/libfoo.so", ("libbar.so",), runpath="/opt/b:/opt/d"),
    Obj("/opt/b/libbar.so", ("libbaz.so",)),
    Obj("/opt/d/libbaz.so"),
    Obj("/bin/chain", ("libfoo.so",), program=True),
    # $ORIGIN and ${ORIGIN}; an empty element is skipped
    Obj("/lib2/libo.so"),
    Obj("/lib3/libo3.so"),
    Obj("/bin/origin", ("libo.so", "libo3.so"), rpath="::$ORIGIN/../lib2:${ORIGIN}/../lib3", program=True),
    # a '$' musl does not know voids the whole RPATH: libo.so is not found
    Obj("/bin/lib-token", ("libo.so",), rpath="$LIB/x:/lib2", program=True),
    # the path file's directories, and the C library's names answered by the loader
    Obj("/opt/pathfile/libpf.so"),
    Obj(
        "/bin/pathfile",
        ("libpf.so", "libc.musl-x86_64.so.1", "libpthread.so.0", "libm.so.6", "libdl.so.2", "libc.so"),
        program=True,
    ),
    # LD_LIBRARY_PATH (run with it) comes first
    Obj("/opt/llp/libfoo.so"),
    Obj("/bin/llp", ("libfoo.so",), program=True),
    # no SONAME reuse: a library loaded by path, then its SONAME needed, is loaded again from the search
    Obj("/opt/q/libq.so", soname="libq.so.1"),
    Obj("/usr/lib/libq.so.1", soname="libq.so.1"),
    Obj("/bin/soname", ("/opt/q/libq.so", "libq.so.1"), program=True),
    # RPATH of the executable reached from a library's NEEDED; a missing library is reported and skipped
    Obj("/usr/lib/libneedsr.so", ("libr.so", "libmissing.so")),
    Obj("/opt/r/libr.so"),
    Obj("/bin/rpath", ("libneedsr.so",), rpath="/opt/r", program=True),
]
RUNS = {  # program -> LD_LIBRARY_PATH it runs with
    "/bin/chain": None,
    "/bin/origin": None,
    "/bin/lib-token": None,
    "/bin/pathfile": None,
    "/bin/llp": "/opt/llp::/nonexistent",
    "/bin/soname": None,
    "/bin/rpath": None,
}


def _build(root: Path, work: Path) -> None:
    (root / "lib").mkdir(parents=True)
    shutil.copy(os.path.realpath(LDSO), root / LDSO.lstrip("/"))
    os.symlink("ld-musl-x86_64.so.1", root / "lib/libc.musl-x86_64.so.1")
    (root / "etc").mkdir()
    (root / "etc/ld-musl-x86_64.path").write_text("/lib\n/usr/local/lib:/usr/lib\n/opt/pathfile\n")
    (work / "lib.c").write_text("int imgscan_lib(void) { return 1; }\n")
    (work / "main.c").write_text("int main(void) { return 0; }\n")
    for obj in OBJECTS:
        dest = root / obj.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        src, kind = ("main.c", []) if obj.program else ("lib.c", ["-shared", "-fPIC"])
        subprocess.run(["musl-gcc", *kind, "-o", str(dest), str(work / src)], check=True)
        steps = [["--add-needed", name] for name in reversed(obj.needed)]  # each goes first
        if obj.soname:
            steps.append(["--set-soname", obj.soname])
        if obj.rpath is not None:
            steps.append(["--force-rpath", "--set-rpath", obj.rpath])
        if obj.runpath is not None:
            steps.append(["--set-rpath", obj.runpath])
        for step in steps:  # one change per run: patchelf 0.14 mixes strings up when given several
            subprocess.run(["patchelf", *step, str(dest)], check=True)


@pytest.fixture(scope="module")
def musl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("musl")
    root = work / "root"
    _build(root, work)
    return root


def oracle(root: Path, program: str, llp: str | None) -> dict[str, str | None]:
    """NEEDED name -> path musl loads it from (None: not found), from `ld-musl --list` in a chroot."""
    env = {"PATH": "/bin"} | ({"LD_LIBRARY_PATH": llp} if llp is not None else {})

    def enter() -> None:
        os.chroot(root)
        os.chdir("/")

    out = subprocess.run(
        [LDSO, "--list", program], env=env, preexec_fn=enter, capture_output=True, text=True, timeout=60
    )
    found: dict[str, str | None] = {}
    for line in out.stdout.splitlines():
        if m := re.match(r"\t(\S+) => (\S+) \(0x[0-9a-f]+\)$", line):
            found[m.group(1)] = m.group(2)
    for m in re.finditer(r"Error loading shared library (\S+): No such file or directory", out.stderr):
        found[m.group(1)] = None
    return found


def imgscan_loads(root: Path, program: str, llp: str | None) -> dict[str, str | None]:
    env = ["--env", f"LD_LIBRARY_PATH={llp}"] if llp is not None else []
    result = subprocess.run(
        [sys.executable, "-m", "imgscan", "ldd", f"dir:{root}", program, "--json", *env],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [obj] = [o for o in json.loads(result.stdout)["objects"] if o["path"] == program]
    return {load["name"]: load["path"] for load in obj["loads"]}


@pytest.mark.parametrize("program", list(RUNS))
def test_loads_equal_musl(musl_root: Path, program: str) -> None:
    expected = oracle(musl_root, program, RUNS[program])
    assert expected, "the oracle printed nothing"
    assert imgscan_loads(musl_root, program, RUNS[program]) == expected


def test_the_cases_show_musl_rules(musl_root: Path) -> None:
    """The oracle's own answers, so each case above tests the rule it claims to."""
    assert oracle(musl_root, "/bin/chain", None)["libbaz.so"] == "/opt/d/libbaz.so"
    origin = oracle(musl_root, "/bin/origin", None)
    assert origin["libo.so"] == "/bin/../lib2/libo.so" and origin["libo3.so"] == "/bin/../lib3/libo3.so"
    assert oracle(musl_root, "/bin/lib-token", None)["libo.so"] is None
    pathfile = oracle(musl_root, "/bin/pathfile", None)
    assert pathfile["libpf.so"] == "/opt/pathfile/libpf.so"
    assert pathfile["libc.musl-x86_64.so.1"] == pathfile["libpthread.so.0"] == LDSO
    assert oracle(musl_root, "/bin/llp", RUNS["/bin/llp"])["libfoo.so"] == "/opt/llp/libfoo.so"
    soname = oracle(musl_root, "/bin/soname", None)
    assert soname["/opt/q/libq.so"] == "/opt/q/libq.so" and soname["libq.so.1"] == "/usr/lib/libq.so.1"
    rpath = oracle(musl_root, "/bin/rpath", None)
    assert rpath["libr.so"] == "/opt/r/libr.so" and rpath["libmissing.so"] is None
