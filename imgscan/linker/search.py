"""Load an object's dependency closure as glibc's ld.so would (elf/dl-load.c, _dl_map_object), or musl's.

Breadth-first from the root object; for each DT_NEEDED of each loaded object, in order:
  1. a name with '/' is a path;  2. an already loaded object matching the name (its load path, a name it
  was requested by, or its SONAME) is reused;  3. glibc: DT_RPATH of the requester and up its loader
  chain, then of the executable (not when the requester has DT_RUNPATH); LD_LIBRARY_PATH; the requester's
  DT_RUNPATH; /etc/ld.so.cache (skipping system-dir entries under NODEFLIB); the system dirs (not under
  NODEFLIB). musl (ldso/dynlink.c load_library): the C library's names (libc.*, libpthread.*, libm.*...)
  are the loader itself; reuse by the loaded-by name only (no SONAME); LD_LIBRARY_PATH (literal, empty
  elements skipped); RUNPATH-or-RPATH of the requester and up its chain ($ORIGIN only: any other '$'
  voids the list); /etc/ld-musl-ARCH.path or the defaults.
In every directory the glibc-hwcaps subdirs come first; a candidate of another ELF class or machine is
passed over. Paths are reported as ld.so prints them: the search dir (as expanded) + '/' + name.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque
from dataclasses import dataclass, field, replace
from functools import cached_property

from imgscan.elf.facts import ElfFacts
from imgscan.errors import ImgscanError
from imgscan.layers.entry import Entry
from imgscan.layers.fsview import FileSystem
from imgscan.linker.context import LinkerContext

# rules: which step of the search found a dependency
DIRECT = "direct"
LOADED = "already-loaded"
INTERPRETER = "interpreter"
RPATH = "rpath"
LD_LIBRARY_PATH = "ld_library_path"
RUNPATH = "runpath"
CACHE = "ld.so.cache"
DEFAULT = "default"
HOST = "host-provided"
NOT_FOUND = "not-found"

# Libraries the NVIDIA container toolkit or `apptainer --nv` inject from the host driver at run time.
_HOST_DRIVER = re.compile(
    r"lib(cuda|cudadebugger|nvcuvid|nvoptix|nvidia-[A-Za-z0-9_-]+|GLX_nvidia|EGL_nvidia|GLESv[12]_CM?_nvidia)"
    r"\.so(\.[0-9]+)*"
)
_TOKEN = re.compile(r"\$(\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")
_MUSL_ORIGIN = re.compile(r"\$(\{ORIGIN\}|ORIGIN)")
# musl's load_library: these names are the C library itself, never searched ("lib" + one of these)
_MUSL_RESERVED = ("c.", "pthread.", "rt.", "m.", "dl.", "util.", "xnet.")


def _musl_family(name: str) -> str:
    """'c.' for libc.so or libc.musl-x86_64.so.1, 'pthread.' for libpthread.so.0...: names musl answers
    with itself; '' for other names."""
    if not name.startswith("lib"):
        return ""
    return next((family for family in _MUSL_RESERVED if name[3:].startswith(family)), "")


def is_host_driver_library(name: str) -> bool:
    return _HOST_DRIVER.fullmatch(name) is not None


@dataclass
class Loaded:
    """One object in the process: where it was loaded from and the names it answers to."""

    path: str  # as ld.so would print it
    realpath: str  # canonical path in the image
    entry: Entry
    facts: ElfFacts
    loader: Loaded | None
    names: set[str] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return posixpath.dirname(self.path) or "/"


@dataclass
class Edge:
    """One DT_NEEDED (or dlopen) name resolved in this process."""

    name: str
    requested_by: str
    path: str | None
    realpath: str | None
    rule: str
    via: str | None = None  # the object whose RPATH/RUNPATH supplied the directory
    layer: int | None = None


@dataclass
class Closure:
    """The load of one root object: objects in load order and every edge, as ldd would list them."""

    root: Loaded
    objects: list[Loaded]
    edges: list[Edge]
    loads: list[Edge]  # the edge that brought each object in, in load order
    process: Process

    @cached_property
    def dlopens(self) -> list[Edge]:
        """Names found as strings in loaded objects, resolved from each one (computed when asked: most
        callers need only the NEEDED closure)."""
        return self.process.dlopen_candidates()


class Loader:
    """Resolves names for one process (one root object) in one image."""

    def __init__(self, fs: FileSystem, ctx: LinkerContext) -> None:
        self.fs = fs
        self.ctx = ctx
        self.objects: list[Loaded] = []
        self._by_realpath: dict[str, Loaded] = {}
        self._subdirs = [*(f"glibc-hwcaps/{h}" for h in ctx.hwcaps), *ctx.legacy_subdirs, ""]

    # ---- candidates -------------------------------------------------------------------------------
    def _candidate(self, path: str, requester: ElfFacts) -> tuple[str, Entry] | None:
        """(canonical path, entry) if path is a loadable ELF of the requester's class and machine."""
        try:
            canonical, entry = self.fs.resolve(
                path.lstrip("/")
                if path.startswith("/")
                else posixpath.join(self.ctx.working_dir, path).lstrip("/")
            )
        except ImgscanError:
            return None
        if entry is None or entry.elf is None or not entry.elf.dynamic:
            return None
        elf = entry.elf
        if (elf.elf_class, elf.machine, elf.little_endian) != (
            requester.elf_class,
            requester.machine,
            requester.little_endian,
        ):
            return None
        return "/" + canonical, entry

    def _in_dirs(self, name: str, dirs: list[str], requester: ElfFacts) -> tuple[str, str, Entry] | None:
        for directory in dirs:
            base = directory.rstrip("/") if len(directory) > 1 else directory
            for sub in self._subdirs:
                prefix = f"{base}/{sub}" if sub else base
                path = f"{prefix}/{name}" if prefix not in ("", "/") else f"{prefix.rstrip('/')}/{name}"
                found = self._candidate(path, requester)
                if found is not None:
                    return path, *found
        return None

    def _expand(self, element: str, owner: Loaded) -> str:
        def token(m: re.Match[str]) -> str:
            key = m.group(2) or m.group(3)
            return {"ORIGIN": owner.origin, "LIB": self.ctx.lib_token, "PLATFORM": self.ctx.platform_token}[
                key
            ]

        return _TOKEN.sub(token, element) if "$" in element else element

    def _path_list(self, elements: list[str] | None, owner: Loaded) -> list[str]:
        """RPATH/RUNPATH/LD_LIBRARY_PATH elements expanded; an empty element is the working directory."""
        return [self._expand(e, owner) if e else self.ctx.working_dir for e in elements or []]

    @staticmethod
    def _musl_path_list(elements: list[str] | None, owner: Loaded | None) -> list[str]:
        """musl's path_open over a list: empty elements are skipped, not the working directory. With an
        owner (RPATH/RUNPATH, musl's fixup_rpath), $ORIGIN and ${ORIGIN} are the only substitutions: any
        other '$' makes musl ignore the whole list. LD_LIBRARY_PATH (no owner) is taken literally."""
        text = ":".join(elements or [])
        if owner is not None and "$" in text:
            if text.count("$") != len(_MUSL_ORIGIN.findall(text)):
                return []
            text = _MUSL_ORIGIN.sub(lambda _m: owner.origin, text)
        return [d for d in re.split(r"[:\n]", text) if d]

    # ---- the search -------------------------------------------------------------------------------
    def _search(self, name: str, requester: Loaded) -> Edge:
        facts = requester.facts
        tries: list[tuple[str, list[str], str | None]] = []
        if not self.ctx.musl:
            if facts.runpath is None:
                chain, seen_main = [], False
                node: Loaded | None = requester
                while node is not None:
                    chain.append(node)
                    seen_main |= node is self.objects[0]
                    node = node.loader
                if not seen_main:
                    chain.append(self.objects[0])
                tries += [
                    (RPATH, self._path_list(n.facts.rpath, n), n.path)
                    for n in chain
                    if n.facts.rpath is not None and n.facts.runpath is None
                ]
            if not self._secure():
                tries.append(
                    (LD_LIBRARY_PATH, self._path_list(self.ctx.ld_library_path, self.objects[0]), None)
                )
            if facts.runpath is not None:
                tries.append((RUNPATH, self._path_list(facts.runpath, requester), requester.path))
        else:
            if not self._secure():
                tries.append((LD_LIBRARY_PATH, self._musl_path_list(self.ctx.ld_library_path, None), None))
            node = requester
            while node is not None:
                own = node.facts.runpath if node.facts.runpath is not None else node.facts.rpath
                if own is not None:
                    tries.append(
                        (
                            RUNPATH if node.facts.runpath is not None else RPATH,
                            self._musl_path_list(own, node),
                            node.path,
                        )
                    )
                node = node.loader
        for rule, dirs, via in tries:
            found = self._in_dirs(name, dirs, facts)
            if found is not None:
                return self._edge(name, requester, found, rule, via)
        if not self.ctx.musl:
            cached = self._from_cache(name, facts)
            if cached is not None:
                return self._edge(name, requester, cached, CACHE, None)
        if not facts.nodeflib or self.ctx.musl:
            found = self._in_dirs(name, self.ctx.system_dirs, facts)
            if found is not None:
                return self._edge(name, requester, found, DEFAULT, None)
        rule = HOST if is_host_driver_library(name) else NOT_FOUND
        return Edge(name, requester.path, None, None, rule)

    def _secure(self) -> bool:
        """Secure mode (LD_LIBRARY_PATH ignored): an executable whose setuid owner or setgid group is not
        the process's own user or group (a setuid-root program run as root is not secure)."""
        root = self.objects[0]
        if root.facts.interpreter is None:
            return False
        mode, entry = root.entry.mode, root.entry
        return bool(
            (mode & 0o4000 and entry.uid != self.ctx.uid) or (mode & 0o2000 and entry.gid != self.ctx.gid)
        )

    def _from_cache(self, name: str, requester: ElfFacts) -> tuple[str, str, Entry] | None:
        """ld.so.cache lookup: the best glibc-hwcaps entry we assume supported, else the first plain one."""
        best: tuple[int, str] | None = None
        for entry in self.ctx.cache.get(name, ()):
            if entry.flags & 0xFFFF != self.ctx.cache_flags:
                continue
            if entry.hwcaps_subdir is None:
                rank = len(self.ctx.hwcaps)
            elif entry.hwcaps_subdir in self.ctx.hwcaps:
                rank = self.ctx.hwcaps.index(entry.hwcaps_subdir)
            else:
                continue
            if best is None or rank < best[0]:
                best = (rank, entry.path)
        if best is None:
            return None
        path = best[1]
        if requester.nodeflib and any(path.startswith(d.rstrip("/") + "/") for d in self.ctx.system_dirs):
            return None  # NODEFLIB: a cached path under a system directory (a prefix match) is not used
        found = self._candidate(path, requester)
        return (path, *found) if found is not None else None  # a stale entry falls through

    def _edge(
        self, name: str, requester: Loaded, found: tuple[str, str, Entry], rule: str, via: str | None
    ) -> Edge:
        path, realpath, entry = found
        return Edge(name, requester.path, path, realpath, rule, via, entry.layer)

    # ---- the load ---------------------------------------------------------------------------------
    def _find_loaded(self, name: str) -> Loaded | None:
        """glibc: an object loaded by that name, path or SONAME. musl: the C library names are the loader
        itself; otherwise only the names objects were loaded by count (musl keeps no SONAME)."""
        if self.ctx.musl and _musl_family(name):
            name = self.ctx.interpreter
        for obj in self.objects:
            if name in obj.names or name == obj.path or (name == obj.facts.soname and not self.ctx.musl):
                return obj
        return None

    def _add(self, path: str, realpath: str, entry: Entry, loader: Loaded | None, name: str) -> Loaded:
        obj = Loaded(path, realpath, entry, entry.elf, loader, {name})  # type: ignore[arg-type]
        self.objects.append(obj)
        self._by_realpath[realpath] = obj
        return obj

    def peek(self, name: str, requester: Loaded) -> Edge:
        """Where a dlopen(name) from requester would land now, without loading it."""
        loaded = self._find_loaded(name)
        if loaded is not None:
            return Edge(name, requester.path, loaded.path, loaded.realpath, LOADED, None, loaded.entry.layer)
        return self._search(name, requester)

    def resolve(self, name: str, requester: Loaded) -> tuple[Edge, Loaded | None]:
        """Resolve one NEEDED name; loads the object when it is new (returned as second item)."""
        loaded = self._find_loaded(name)
        if loaded is not None:
            return Edge(
                name, requester.path, loaded.path, loaded.realpath, LOADED, None, loaded.entry.layer
            ), None
        if "/" in name:
            found = self._candidate(name, requester.facts)
            edge = (
                Edge(name, requester.path, name, found[0], DIRECT, None, found[1].layer)
                if found
                else Edge(name, requester.path, None, None, NOT_FOUND)
            )
        else:
            edge = self._search(name, requester)
        if edge.path is None or edge.realpath is None:
            return edge, None
        same_file = self._by_realpath.get(edge.realpath)
        if same_file is not None:  # the same file reached by another path: ld.so reuses it (same inode)
            same_file.names.add(name)
            return Edge(
                name, requester.path, same_file.path, same_file.realpath, LOADED, None, same_file.entry.layer
            ), None
        entry = self.fs.lookup(edge.realpath.lstrip("/"))
        assert entry is not None
        return edge, self._add(edge.path, edge.realpath, entry, requester, name)


class Process:
    """A process being built up: the root (executable or library) and its closure, then any objects
    dlopen'ed into it later (with their own closures), in the order ld.so would map them."""

    def __init__(
        self,
        fs: FileSystem,
        ctx: LinkerContext,
        root_path: str,
        root_entry: Entry,
        as_listed: bool | None = None,
    ) -> None:
        """The root's $ORIGIN: for an executable, the directory of its real path (the kernel's
        /proc/self/exe); for a library, or when as_listed, the directory of the path as given (what
        dlopen(path) and `ld.so --list PATH` do)."""
        assert root_entry.elf is not None
        self.loader = Loader(fs, ctx)
        self.edges: list[Edge] = []
        self.loads: list[Edge] = []
        realpath, _ = fs.resolve(root_path.lstrip("/"))
        if as_listed is None:
            as_listed = root_entry.elf.interpreter is None
        self.root = self.loader._add(
            root_path if as_listed else "/" + realpath, "/" + realpath, root_entry, None, root_path
        )
        self._rtld = None
        self._interpreter_listed: set[str] = set()
        interp_path, interp = fs.resolve(ctx.interpreter.lstrip("/"))
        if interp is not None and interp.elf is not None and "/" + interp_path != self.root.realpath:
            self._rtld = self.loader._add(ctx.interpreter, "/" + interp_path, interp, None, ctx.interpreter)
            if interp.elf.soname:
                self._rtld.names.add(interp.elf.soname)
        self._load_needed(self.root)

    def _load_needed(self, first: Loaded) -> None:
        """Breadth-first: every NEEDED of first, then of what that brought in, and so on."""
        queue = deque([first])
        while queue:
            obj = queue.popleft()
            for name in obj.facts.needed:
                edge, new = self.loader.resolve(name, obj)
                self.edges.append(edge)
                if new is not None:
                    self.loads.append(edge)
                    queue.append(new)
                elif edge.rule in (NOT_FOUND, HOST):
                    self.loads.append(edge)
                elif self._rtld is not None and edge.realpath == self._rtld.realpath:
                    self._list_interpreter(edge)

    def _list_interpreter(self, edge: Edge) -> None:
        """ldd lists the loader where it is first needed; musl's once per family of C library names
        (libc.*, libpthread.*, libm.*, ...), each of which it answers with itself."""
        family = _musl_family(edge.name) if self.loader.ctx.musl else ""
        if family not in self._interpreter_listed:
            self._interpreter_listed.add(family)
            self.loads.append(replace(edge, rule=INTERPRETER))

    def dlopen(self, name: str, requester: Loaded, rule: str | None = None) -> Edge:
        """dlopen(name) called from requester: found (or reused) like a NEEDED, then its closure loaded.
        rule relabels the edge of a load made for a stated reason (torch's preload)."""
        edge, new = self.loader.resolve(name, requester)
        if rule is not None:
            edge = replace(edge, rule=rule)
        self.edges.append(edge)
        if new is not None:
            self.loads.append(edge)
            self._load_needed(new)
        return edge

    def dlopen_candidates(self) -> list[Edge]:
        """Names found as strings in loaded objects, resolved from each one without loading them."""
        return [
            self.loader.peek(name, obj)
            for obj in self.loader.objects
            for name in obj.facts.strings.get("dlopen", ())
            if name not in obj.facts.needed and name != posixpath.basename(obj.realpath)
        ]

    def closure(self) -> Closure:
        return Closure(self.root, self.loader.objects, self.edges, self.loads, self)


def load_closure(
    fs: FileSystem, root_path: str, root_entry: Entry, ctx: LinkerContext, as_listed: bool | None = None
) -> Closure:
    """Load root_path and all it needs, breadth-first (what `ldd` shows)."""
    return Process(fs, ctx, root_path, root_entry, as_listed).closure()
