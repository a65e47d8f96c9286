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

HWCAPS_LEVELS = {
    "v2": ["x86-64-v2"],
    "v3": ["x86-64-v3", "x86-64-v2"],
    "v4": ["x86-64-v4", "x86-64-v3", "x86-64-v2"],
}
DEFAULT_HWCAPS = "v3"
DEFAULT_INTERPRETERS = {(EM_X86_64, 64): "/lib64/ld-linux-x86-64.so.2", (EM_386, 32): "/lib/ld-linux.so.2"}
_SYSTEM_DIRS_RE = re.compile(rb"(?:/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*/\x00){2,}")
MUSL_DEFAULT_DIRS = ["/lib", "/usr/local/lib", "/usr/lib"]


@dataclass
class LinkerContext:
    """One process's view: which loader, where it searches, what LD_LIBRARY_PATH says."""

    interpreter: str
    musl: bool
    system_dirs: list[str]  # without trailing '/'
    lib_token: str  # $LIB
    platform_token: str  # $PLATFORM
    hwcaps: list[str]  # glibc-hwcaps subdirs searched, highest priority first
    ld_library_path: list[str]
    cache: dict[str, list[CacheEntry]]  # soname -> entries in cache order
    cache_flags: int
    working_dir: str = "/"
    warnings: list[str] = field(default_factory=list)


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


def build_context(
    fs: FileSystem, root: ElfFacts, env: list[str], hwcaps: str = DEFAULT_HWCAPS, working_dir: str = "/"
) -> LinkerContext:
    """The loader context for a process whose first object is root (an executable or a library)."""
    warnings: list[str] = []
    interpreter = root.interpreter or DEFAULT_INTERPRETERS.get(
        (root.machine, root.elf_class), "/lib64/ld-linux-x86-64.so.2"
    )
    musl = "ld-musl-" in interpreter
    llp_text = env_value(env, "LD_LIBRARY_PATH")
    llp = re.split(r"[:;]", llp_text) if llp_text else []
    if musl:
        dirs = _musl_dirs(fs, interpreter)
        return LinkerContext(interpreter, True, dirs, "lib", "x86_64", [], llp, {}, 0, working_dir, warnings)
    ldso = fs.lookup(interpreter)
    dirs = system_dirs_of_ldso(ldso.content) if ldso is not None and ldso.content else None
    if dirs is None:
        dirs = _fallback_system_dirs(fs, root.machine, root.elf_class)
        warnings.append(
            f"{interpreter}: not in the image or unreadable; assuming system dirs {':'.join(dirs)}"
        )
    lib_token = dirs[0].strip("/") if dirs else "lib"
    subdirs = HWCAPS_LEVELS.get(hwcaps, []) if root.machine == EM_X86_64 else []
    # glibc 2.26-2.36 names the x86-64 platform 'haswell' on CPUs of level v3 and above
    platform = "haswell" if "x86-64-v3" in subdirs else "x86_64" if root.machine == EM_X86_64 else "i686"
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
    return LinkerContext(
        interpreter, False, dirs, lib_token, platform, subdirs, llp, cache, flags, working_dir, warnings
    )
