"""Ground truth for the ld.so emulation: the image's own glibc loader, run in a chroot of its unpacked rootfs.

For each object, `LD_TRACE_LOADED_OBJECTS=1 /lib64/ld-linux-x86-64.so.2 OBJECT` (what ldd does) prints the
whole breadth-first closure, not-found names included. (`ld.so --list` stops at the first missing library
on glibc 2.36: rc 127 and nothing on stdout, so it is not used.) The rootfs's ld.so.cache is honoured
because the loader runs inside the chroot. Objects are screened on the host first (ELF header, program
headers), because the loader is not a safe judge of everything: a static non-PIE executable makes it crash.

Setuid/setgid executables: when the image's user (config User, default root) exec'ing one would be
AT_SECURE (setgid to a group that is not the user's, setuid to another owner), the loader ignores
LD_LIBRARY_PATH and the other unsecure variables. It also refuses to trace in that mode (`_exit(5)`), so
such objects are traced like the others with those variables removed (mode 'secure'); the secure-mode
limits on $ORIGIN are not reproduced. A setuid-root program run by root is not AT_SECURE.

`ld.so PATH` takes the main object's $ORIGIN from PATH as given; a real exec takes it from /proc/self/exe
(the realpath). trace_many(..., exec_mode=True) execs executables instead (a private mount namespace with
/proc mounted in the rootfs), for the cases where the two differ: an executable named through a symlink.

The chroot happens in forked worker processes (os.chroot in the pool initializer) so that no host binary
ever sees the LD_* variables. Needs root.

    python -m tests.oracle ROOTFS [--env K=V] [--mask x86-64-v3:x86-64-v2] PATH...
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import multiprocessing
import os
import re
import selectors  # noqa: F401  (imported before the workers chroot: subprocess needs it for timeouts)
import stat
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

RTLD64 = "/lib64/ld-linux-x86-64.so.2"
RTLD32 = "/lib/ld-linux.so.2"
EM_386, EM_X86_64 = 3, 62
ET_EXEC, ET_DYN = 2, 3
PT_DYNAMIC, PT_INTERP = 2, 3
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x20000, 0x4000, 1 << 18
VDSO_NAMES = ("linux-vdso.so.1", "linux-gate.so.1", "linux-vdso64.so.1")
LEVELS = ("v2", "v3", "v4")
# glibc 2.36 sysdeps/generic/unsecvars.h: what an AT_SECURE exec removes from the environment (LD_* part).
UNSECURE_VARS = (
    "GLIBC_TUNABLES",
    "LD_AUDIT",
    "LD_DEBUG",
    "LD_DEBUG_OUTPUT",
    "LD_DYNAMIC_WEAK",
    "LD_HWCAP_MASK",
    "LD_LIBRARY_PATH",
    "LD_ORIGIN_PATH",
    "LD_PRELOAD",
    "LD_PROFILE",
    "LD_SHOW_AUXV",
    "LD_USE_LOAD_BIAS",
)

_FOUND = re.compile(r"^\t(?P<name>.+?) => (?P<path>.+) \(0x[0-9a-f]+\)$")
_NOT_FOUND = re.compile(r"^\t(?P<name>.+?) => not found$")
_BARE = re.compile(r"^\t(?P<path>.+) \(0x[0-9a-f]+\)$")


@dataclass(frozen=True)
class Load:
    """One line of the loader's trace: NEEDED name and the path it printed (None: 'not found').
    interp marks the loader's own line ('/lib64/ld-linux-x86-64.so.2 (0x...)': name == path)."""

    name: str
    path: str | None
    interp: bool = False


@dataclass
class Trace:
    """The oracle's answer for one object. loads is None when there is no ground truth (skipped says why).
    mode: 'ld.so' (loader run on the object), 'secure' (the same without the variables an AT_SECURE exec
    drops), 'exec' (the executable exec'd, see trace_many), 'static' (no PT_DYNAMIC: the closure is empty,
    nothing run), 'skip'."""

    path: str
    loads: list[Load] | None
    mode: str
    skipped: str | None = None
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    unparsed: list[str] = field(default_factory=list)

    def pairs(self, include_interp: bool = True) -> list[tuple[str, str | None]]:
        """[(name, path)] in the loader's order (not-found names repeat, once per requester)."""
        return [(ld.name, ld.path) for ld in self.loads or [] if include_interp or not ld.interp]


# --------------------------------------------------------------------------------------------------------
# host-side screening


def resolve_in_root(root: Path, path: str, max_links: int = 40) -> Path | None:
    """The host path of image path `path`, following symlinks as a chroot would (absolute targets restart
    at `root`, '..' stops there). None when a component is missing or loops."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = root.joinpath(*done, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


@dataclass(frozen=True)
class ElfHeader:
    """What the screening needs from an ELF file."""

    elf_class: int  # 32 or 64
    machine: int
    elf_type: int
    dynamic: bool
    interp: str | None


def read_elf_header(host_path: Path) -> ElfHeader | None:
    """Class, machine, type, PT_DYNAMIC and PT_INTERP of a little-endian ELF file; None if not ELF."""
    try:
        with open(host_path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[5] != 1:
                return None
            is64 = ident[4] == 2
            if is64:
                e_type, e_machine, _, _, e_phoff = struct.unpack_from("<HHIQQ", ident, 16)
                e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 54)
            else:
                e_type, e_machine, _, _, e_phoff = struct.unpack_from("<HHIII", ident, 16)
                e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 42)
            dynamic, interp = False, None
            f.seek(e_phoff)
            table = f.read(e_phentsize * min(e_phnum, 512))
            for i in range(len(table) // max(e_phentsize, 1)):
                entry = table[i * e_phentsize : (i + 1) * e_phentsize]
                if is64:
                    p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", entry)
                else:
                    p_type, p_offset, _, _, p_filesz = struct.unpack_from("<IIIII", entry)
                if p_type == PT_DYNAMIC:
                    dynamic = True
                elif p_type == PT_INTERP and 0 < p_filesz < 4096:
                    f.seek(p_offset)
                    interp = f.read(p_filesz).split(b"\0", 1)[0].decode(errors="replace")
            return ElfHeader(64 if is64 else 32, e_machine, e_type, dynamic, interp)
    except (OSError, struct.error):
        return None


def find_elf_objects(root: Path, under: Iterable[str] = ("/",)) -> list[str]:
    """Image paths of every regular file starting with the ELF magic (no symlink followed), sorted."""
    out: set[str] = set()
    for top in under:
        start = resolve_in_root(root, top)
        if start is None:
            continue
        for dirpath, dirnames, filenames in os.walk(start):
            rel = os.path.relpath(dirpath, root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
            for name in filenames:
                host = os.path.join(dirpath, name)
                try:
                    st = os.lstat(host)
                    if not stat.S_ISREG(st.st_mode) or st.st_size < 52:
                        continue
                    with open(host, "rb") as f:
                        if f.read(4) != b"\x7fELF":
                            continue
                except OSError:
                    continue
                out.add("/" + os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def parse_user(root: Path, user: str | None) -> tuple[int, int]:
    """(uid, gid) of an image config User ('', 'name', 'uid', 'name:group', 'uid:gid') via its /etc files."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")

    def lookup(file: str, key: str, field_no: int) -> int | None:
        path = resolve_in_root(root, file)
        if path is None or not path.exists():
            return None
        for line in path.read_text(errors="replace").splitlines():
            cols = line.split(":")
            if len(cols) > field_no and cols[0] == key:
                return int(cols[field_no])
        return None

    uid = int(name) if name.isdigit() else lookup("/etc/passwd", name, 2)
    if uid is None:
        raise ValueError(f"user {name!r} is not in the image's /etc/passwd")
    if group:
        gid = int(group) if group.isdigit() else lookup("/etc/group", group, 2)
    else:
        gid = lookup("/etc/passwd", name, 3) if not name.isdigit() else None
        if gid is None:
            passwd = resolve_in_root(root, "/etc/passwd")
            gid = 0
            if passwd is not None and passwd.exists():
                for line in passwd.read_text(errors="replace").splitlines():
                    cols = line.split(":")
                    if len(cols) > 3 and cols[2] == str(uid):
                        gid = int(cols[3])
                        break
    if gid is None:
        raise ValueError(f"group {group!r} is not in the image's /etc/group")
    return uid, gid


# --------------------------------------------------------------------------------------------------------
# the chrooted workers


def _chroot_worker(root: str, with_proc: bool = False) -> None:
    """Pool initializer: chroot into the rootfs; with_proc: first a private mount namespace, then a fresh
    /proc inside (the kernel's exec needs it for the main program's $ORIGIN, /proc/self/exe)."""
    if with_proc:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) / make / private")
    os.chroot(root)
    os.chdir("/")
    if with_proc and libc.mount(b"proc", b"/proc", b"proc", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount proc on /proc in the rootfs")


def _run_in_chroot(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
    """Runs in a chrooted worker: the command with exactly `env`; (rc or None on timeout, stdout, stderr)."""
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return None, (exc.stdout or b"").decode(errors="replace"), f"timed out after {timeout} s"
    except OSError as exc:
        return 127, "", f"exec failed: {exc}"
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def parse_trace(stdout: str, rtld: str) -> tuple[list[Load], list[str]]:
    """The loader's trace lines as Loads (vdso skipped); lines that match no known form are returned too."""
    loads: list[Load] = []
    unparsed: list[str] = []
    for line in stdout.splitlines():
        if not line.strip() or line.strip() == "statically linked":
            continue
        if m := _NOT_FOUND.match(line):
            loads.append(Load(m["name"], None))
        elif m := _FOUND.match(line):
            if m["name"] not in VDSO_NAMES:
                loads.append(Load(m["name"], m["path"], interp=m["name"] == rtld))
        elif m := _BARE.match(line):
            if m["path"] not in VDSO_NAMES:
                loads.append(Load(m["path"], m["path"], interp=m["path"] == rtld))
        else:
            unparsed.append(line)
    return loads, unparsed


class Oracle:
    """The real loader of one unpacked rootfs.

    env: the process environment the image would give its program (only LD_* and GLIBC_TUNABLES are
    passed on). hwcaps_mask: glibc-hwcaps subdirs to search, e.g. 'x86-64-v3:x86-64-v2' (ld.so's
    --glibc-hwcaps-mask; None: every level the CPU supports). user: the image config User.
    """

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        hwcaps_mask: str | None = None,
        user: str | None = None,
        timeout: float = 60.0,
        jobs: int | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the ld.so oracle chroots: it needs root")
        self.root = Path(root)
        self.env = {k: v for k, v in (env or {}).items() if k.startswith("LD_") or k == "GLIBC_TUNABLES"}
        self.hwcaps_mask = hwcaps_mask
        self.uid, self.gid = parse_user(self.root, user)
        self.timeout = timeout
        self.jobs = jobs or 2 * (os.cpu_count() or 1)

    # ---- single-object planning (host side)

    def _plan(self, path: str, exec_mode: bool = False) -> Trace | tuple[str, list[str], dict[str, str]]:
        """A finished Trace (static or skipped), or (mode, argv, env) to run in the chroot."""
        host = resolve_in_root(self.root, path)
        if host is None or not host.is_file():
            return Trace(path, None, "skip", skipped="no such file in the image")
        hdr = read_elf_header(host)
        if hdr is None:
            return Trace(path, None, "skip", skipped="not a little-endian ELF file")
        if hdr.elf_type not in (ET_EXEC, ET_DYN):
            return Trace(path, None, "skip", skipped=f"not loadable (e_type {hdr.elf_type})")
        if (hdr.elf_class, hdr.machine) == (64, EM_X86_64):
            rtld = RTLD64
        elif (hdr.elf_class, hdr.machine) == (32, EM_386):
            rtld = RTLD32
        else:
            return Trace(
                path, None, "skip", skipped=f"ELFCLASS{hdr.elf_class} e_machine {hdr.machine}: no loader here"
            )
        if not hdr.dynamic:
            return Trace(path, [], "static")
        rtld_host = resolve_in_root(self.root, rtld)
        if rtld_host is None or not rtld_host.is_file():
            return Trace(path, None, "skip", skipped=f"ELFCLASS{hdr.elf_class}: the image has no {rtld}")
        st = os.stat(host)
        secure = hdr.interp is not None and (
            bool(st.st_mode & stat.S_ISUID and st.st_uid != self.uid)
            or bool(st.st_mode & stat.S_ISGID and st.st_gid != self.gid)
        )
        env = {k: v for k, v in self.env.items() if not (secure and k in UNSECURE_VARS)}
        env["LD_TRACE_LOADED_OBJECTS"] = "1"
        if exec_mode:
            if hdr.interp != rtld:
                return Trace(
                    path, None, "skip", skipped=f"exec mode needs PT_INTERP {rtld} (has {hdr.interp})"
                )
            if secure or self.hwcaps_mask is not None:
                return Trace(path, None, "skip", skipped="exec mode: AT_SECURE or a hwcaps mask")
            if not os.access(host, os.X_OK):
                return Trace(path, None, "skip", skipped="exec mode: not executable")
            return "exec", [path], env
        argv = [rtld]
        if self.hwcaps_mask is not None:
            argv += ["--glibc-hwcaps-mask", self.hwcaps_mask]
        return ("secure" if secure else "ld.so"), [*argv, path], env

    def _finish(self, path: str, mode: str, argv: list[str], result: tuple[int | None, str, str]) -> Trace:
        rc, out, err = result
        if rc is None:
            return Trace(path, None, "skip", skipped=err, rc=rc, stdout=out, stderr=err)
        if rc != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
            return Trace(
                path, None, "skip", skipped=f"loader refused it: {last}", rc=rc, stdout=out, stderr=err
            )
        loads, unparsed = parse_trace(out, RTLD32 if argv[0] == RTLD32 else RTLD64)
        return Trace(path, loads, mode, rc=rc, stdout=out, stderr=err, unparsed=unparsed)

    # ---- running

    def trace_many(self, paths: Iterable[str], exec_mode: bool = False) -> dict[str, Trace]:
        """Trace every path (in parallel chrooted workers); {path: Trace} in the order given.

        exec_mode: exec executables themselves (kernel exec, /proc mounted in a private namespace), as a
        user running them would: the main program's $ORIGIN is then the directory of its realpath, not of
        the path named. Only for dynamic executables with the image's glibc loader as PT_INTERP (the loader
        stops before their code); not AT_SECURE ones (the loader exits 5), and not with a hwcaps mask.
        """
        results: dict[str, Trace] = {}
        todo: list[tuple[str, str, list[str], dict[str, str]]] = []
        for p in dict.fromkeys(paths):
            plan = self._plan(p, exec_mode)
            if isinstance(plan, Trace):
                results[p] = plan
            else:
                todo.append((p, *plan))
        if todo:
            ctx = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(
                min(self.jobs, len(todo)),
                mp_context=ctx,
                initializer=_chroot_worker,
                initargs=(str(self.root), exec_mode),
            ) as pool:
                futures = {
                    pool.submit(_run_in_chroot, argv, env, self.timeout): (p, mode, argv)
                    for p, mode, argv, env in todo
                }
                for fut in concurrent.futures.as_completed(futures):
                    p, mode, argv = futures[fut]
                    results[p] = self._finish(p, mode, argv, fut.result())
        return {p: results[p] for p in dict.fromkeys(paths)}

    def trace(self, path: str) -> Trace:
        return self.trace_many([path])[path]

    def run_rtld(self, *args: str) -> str:
        """Run the rootfs's x86-64 loader with `args` (no LD_* in its environment); its stdout."""
        results = self.run_in_root([[RTLD64, *args]], {})
        rc, out, err = results[0]
        if rc != 0:
            raise RuntimeError(f"{RTLD64} {' '.join(args)}: exit {rc}: {err.strip()}")
        return out

    def run_in_root(self, argvs: list[list[str]], env: dict[str, str]) -> list[tuple[int | None, str, str]]:
        """Run commands in the chroot, one after the other, with exactly `env`: [(rc, stdout, stderr)]."""
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=ctx, initializer=_chroot_worker, initargs=(str(self.root),)
        ) as pool:
            n = len(argvs)
            return list(pool.map(_run_in_chroot, argvs, [env] * n, [self.timeout] * n))

    # ---- what this CPU makes the loader do

    @functools.cached_property
    def _help(self) -> str:
        return self.run_rtld("--help")

    def supported_levels(self) -> list[str]:
        """glibc-hwcaps levels the loader searches on this CPU, best first: e.g. ['v4', 'v3', 'v2']."""
        text = self._help
        section = text.split("Subdirectories of glibc-hwcaps directories", 1)[-1]
        found = re.findall(r"^\s+x86-64-(v\d) \(supported, searched\)", section, re.M)
        return sorted(set(found) & set(LEVELS), reverse=True)

    def platform(self) -> str:
        """What $PLATFORM expands to on this CPU (ld.so --help's AT_PLATFORM line; x86_64 when absent).
        glibc 2.26+ on an Intel CPU with AVX2, BMI1/2, LZCNT, MOVBE, POPCNT says 'haswell'."""
        m = re.search(r"^\s+(\S+) \(AT_PLATFORM;", self._help, re.M)
        return m.group(1) if m else "x86_64"


def hwcaps_mask(level: str) -> str:
    """The --glibc-hwcaps-mask that searches `level` and below: 'v3' -> 'x86-64-v3:x86-64-v2'."""
    wanted = LEVELS[: LEVELS.index(level) + 1]
    return ":".join(f"x86-64-{lv}" for lv in reversed(wanted))


def iter_lines(traces: dict[str, Trace]) -> Iterator[str]:
    """Human-readable dump of traces (for the CLI and failure messages)."""
    for path, t in traces.items():
        head = f"{path} [{t.mode}]" + (f" skipped: {t.skipped}" if t.skipped else "")
        yield head
        for ld in t.loads or []:
            yield f"    {ld.name} => {ld.path or 'not found'}" + ("  (interpreter)" if ld.interp else "")
        for line in t.unparsed:
            yield f"    ?? {line}"


def main(argv: list[str]) -> int:
    env: dict[str, str] = {}
    mask = None
    args: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--env":
            k, _, v = next(it).partition("=")
            env[k] = v
        elif a == "--mask":
            mask = next(it)
        else:
            args.append(a)
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    oracle = Oracle(Path(args[0]), env, mask)
    paths = args[1:] or find_elf_objects(oracle.root)
    for line in iter_lines(oracle.trace_many(paths)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
