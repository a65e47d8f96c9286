"""The facts ld.so takes from its surroundings, read from the image: env, cache, system dirs, hwcaps.

Everything here comes from the image itself where the image says it (the config's Env, /etc/ld.so.cache,
the search path compiled into the image's own ld.so); fallbacks are the distro defaults, with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imgscan.elf.facts import EM_386, EM_X86_64, ElfFacts
from imgscan.errors import ImgscanError
from imgscan.layers.fsview import FileSystem
from imgscan.linker.ldcache import CACHE_FLAGS, CacheEntry, parse_ld_so_cache


@dataclass(frozen=True)
class Cpu:
    """What the host CPU tells ld.so, which the image cannot: the x86-64 level (glibc-hwcaps subdirs) and
    glibc's platform name (AT_PLATFORM as glibc rewrites it: 'haswell' on Intel CPUs of level v3 and up,
    'xeon_phi' on Knights Landing, 'x86_64' otherwise, AMD included)."""

    level: str = "v3"
    platform: str | None = None  # None: 'haswell' at v3 and above, else 'x86_64'

    def hwcaps_subdirs(self) -> list[str]:
        return HWCAPS_LEVELS.get(self.level, [])

    def platform_name(self) -> str:
        return self.platform or ("haswell" if self.level in ("v3", "v4") else "x86_64")

    def legacy_subdirs(self) -> list[str]:
        """glibc <= 2.36's legacy hwcap subdirectories, in its search order: every combination of
        tls, the platform, avx512_1 and x86_64, counting down from all of them (ld.so --help lists them)."""
        parts = ["tls"]
        if self.platform_name() in ("haswell", "xeon_phi"):
            parts.append(self.platform_name())
        if self.level == "v4":
            parts.append("avx512_1")
        parts.append("x86_64")
        n = len(parts)
        return [
            "/".join(p for i, p in enumerate(parts) if mask >> (n - 1 - i) & 1)
            for mask in range(2**n - 1, 0, -1)
        ]


HWCAPS_LEVELS = {
    "v2": ["x86-64-v2"],
    "v3": ["x86-64-v3", "x86-64-v2"],
    "v4": ["x86-64-v4", "x86-64-v3", "x86-64-v2"],
}
DEFAULT_HWCAPS = "v3"
DEFAULT_INTERPRETERS = {(EM_X86_64, 64): "/lib64/ld-linux-x86-64.so.2", (EM_386, 32): "/lib/ld-linux.so.2"}
_SYSTEM_DIRS_RE = re.compile(rb"(?:/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*/\x00){2,}")
MUSL_DEFAULT_DIRS = ["/lib", "/usr/local/lib", "/usr/lib"]
DEFAULT_CPU = Cpu()


@dataclass
class LinkerContext:
    """One process's view: which loader, where it searches, what LD_LIBRARY_PATH says."""

    interpreter: str
    musl: bool
    system_dirs: list[str]  # without trailing '/'
    lib_token: str  # $LIB
    platform_token: str  # $PLATFORM
    hwcaps: list[str]  # glibc-hwcaps subdirs searched, highest priority first
    legacy_subdirs: list[str]  # glibc <= 2.36: tls/haswell/x86_64 ... combinations, searched next
    ld_library_path: list[str]
    cache: dict[str, list[CacheEntry]]  # soname -> entries in cache order
    cache_flags: int
    working_dir: str = "/"
    warnings: list[str] = field(default_factory=list)
    uid: int = 0  # the process's user and group, from the config's User: setuid/setgid decide secure mode
    gid: int = 0


def env_value(env: list[str], key: str) -> str | None:
    """The last KEY=VALUE in an OCI Env list (later entries override earlier ones)."""
    value = None
    for item in env:
        k, sep, v = item.partition("=")
        if sep and k == key:
            value = v
    return value


def system_dirs_of_ldso(data: bytes) -> list[str] | None:
    """The default search path glibc compiled into ld.so: a run of NUL-terminated '/dir/' strings."""
    match = _SYSTEM_DIRS_RE.search(data)
    if match is None:
        return None
    return [d.decode().rstrip("/") or "/" for d in match.group(0).split(b"\0") if d]


def _fallback_system_dirs(fs: FileSystem, machine: int, elf_class: int) -> list[str]:
    """Debian-style multiarch where the image has it, else the upstream lib64/lib layout."""
    if machine == EM_X86_64 and fs.lookup("usr/lib/x86_64-linux-gnu") is not None:
        return ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"]
    if machine == EM_386 and fs.lookup("usr/lib/i386-linux-gnu") is not None:
        return ["/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu", "/lib", "/usr/lib"]
    return ["/lib64", "/usr/lib64"] if elf_class == 64 else ["/lib", "/usr/lib"]


def _musl_dirs(fs: FileSystem, interpreter: str) -> list[str]:
    arch = interpreter.rsplit("ld-musl-", 1)[-1].removesuffix(".so.1")
    entry = fs.lookup(f"etc/ld-musl-{arch}.path")
    if entry is None or entry.content is None:
        return MUSL_DEFAULT_DIRS
    text = entry.content.decode("utf-8", "replace")
    return [d for d in re.split(r"[:\n]", text) if d]


def glibc_version(ldso: bytes) -> tuple[int, int] | None:
    """'release version 2.36' as ld.so prints it in --version."""
    match = re.search(rb"release version (\d+)\.(\d+)", ldso)
    return (int(match.group(1)), int(match.group(2))) if match else None


def user_ids(fs: FileSystem, user: str) -> tuple[int, int]:
    """uid and gid of the config's User ('', 'root', '1000', '1000:1000', 'name[:group]')."""
    name, _, group = user.partition(":")

    def lookup(table: str, key: str, field_index: int) -> int:
        if not key:
            return 0
        if key.isdigit():
            return int(key)
        entry = fs.lookup(f"etc/{table}")
        for line in (entry.content or b"").decode("utf-8", "replace").splitlines() if entry else []:
            fields = line.split(":")
            if fields[0] == key and len(fields) > field_index and fields[field_index].isdigit():
                return int(fields[field_index])
        return 0

    uid = lookup("passwd", name, 2)
    gid = lookup("group", group, 2) if group else (lookup("passwd", name, 3) if name else 0)
    return uid, gid


@dataclass(frozen=True)
class RunSettings:
    """How the container runs: its Env (with --env overrides), the CPU assumed, WorkingDir and User."""

    env: list[str] = field(default_factory=list)
    cpu: Cpu = DEFAULT_CPU
    working_dir: str = "/"
    user: str = ""


def build_context(fs: FileSystem, root: ElfFacts, settings: RunSettings) -> LinkerContext:
    """The loader context for a process whose first object is root (an executable or a library)."""
    warnings: list[str] = []
    interpreter = root.interpreter or DEFAULT_INTERPRETERS.get(
        (root.machine, root.elf_class), "/lib64/ld-linux-x86-64.so.2"
    )
    musl = "ld-musl-" in interpreter
    llp_text = env_value(settings.env, "LD_LIBRARY_PATH")
    llp = re.split(r"[:;]", llp_text) if llp_text else []
    if musl:
        dirs = _musl_dirs(fs, interpreter)
        return LinkerContext(
            interpreter, True, dirs, "lib", "x86_64", [], [], llp, {}, 0, settings.working_dir, warnings
        )
    ldso = fs.lookup(interpreter)
    dirs = system_dirs_of_ldso(ldso.content) if ldso is not None and ldso.content else None
    if dirs is None:
        dirs = _fallback_system_dirs(fs, root.machine, root.elf_class)
        warnings.append(
            f"{interpreter}: not in the image or unreadable; assuming system dirs {':'.join(dirs)}"
        )
    lib_token = dirs[0].strip("/") if dirs else "lib"
    x86_64 = root.machine == EM_X86_64
    subdirs = settings.cpu.hwcaps_subdirs() if x86_64 else []
    version = glibc_version(ldso.content) if ldso is not None and ldso.content else None
    legacy = settings.cpu.legacy_subdirs() if x86_64 and (version is None or version < (2, 37)) else []
    platform = settings.cpu.platform_name() if x86_64 else "i686"
    cache: dict[str, list[CacheEntry]] = {}
    cache_entry = fs.lookup("etc/ld.so.cache")
    if cache_entry is None or cache_entry.content is None:
        warnings.append("/etc/ld.so.cache: absent; ld.so goes straight to the default dirs")
    else:
        try:
            for item in parse_ld_so_cache(cache_entry.content):
                cache.setdefault(item.soname, []).append(item)
        except ImgscanError as e:
            warnings.append(f"/etc/ld.so.cache: {e}; ignored, as ld.so would")
    flags = CACHE_FLAGS.get((root.machine, root.elf_class), -1)
    uid, gid = user_ids(fs, settings.user)
    return LinkerContext(
        interpreter,
        False,
        dirs,
        lib_token,
        platform,
        subdirs,
        legacy,
        llp,
        cache,
        flags,
        settings.working_dir,
        warnings,
        uid,
        gid,
    )
