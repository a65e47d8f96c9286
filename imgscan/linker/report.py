"""The ldd view: each root object's closure as JSON-ready data and as an lddtree-like text tree."""

from __future__ import annotations

from typing import Any

from imgscan.elf.facts import ElfFacts
from imgscan.errors import ImgscanError
from imgscan.layers.entry import FILE, HARDLINK
from imgscan.layers.fsview import FileSystem
from imgscan.linker.context import LinkerContext, RunSettings, build_context, env_value
from imgscan.linker.search import LOADED, Closure, Edge, Loaded, load_closure

_MACHINES = {3: "i386", 62: "x86_64", 183: "aarch64", 21: "ppc64", 22: "s390x", 40: "arm", 243: "riscv"}
_TYPES = {1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}


def elf_objects(fs: FileSystem) -> list[str]:
    """Every dynamically linked ELF file in the image (what `ldd --all` takes as roots), sorted."""
    return [
        "/" + path
        for path, entry in fs.walk()
        if entry.kind in (FILE, HARDLINK) and entry.elf is not None and entry.elf.dynamic
    ]


def _facts_data(facts: ElfFacts) -> dict[str, Any]:
    return {
        "class": f"ELF{facts.elf_class}",
        "machine": _MACHINES.get(facts.machine, str(facts.machine)),
        "type": _TYPES.get(facts.elf_type, str(facts.elf_type)),
        "interpreter": facts.interpreter,
        "soname": facts.soname,
        "rpath": facts.rpath,
        "runpath": facts.runpath,
        "nodeflib": facts.nodeflib,
        "build_id": facts.build_id,
    }


def _edge_data(edge: Edge) -> dict[str, Any]:
    return {
        "name": edge.name,
        "path": edge.path,
        "realpath": edge.realpath,
        "rule": edge.rule,
        "via": edge.via,
        "layer": edge.layer,
        "requested_by": edge.requested_by,
    }


def _object_data(obj: Loaded, closure: Closure) -> dict[str, Any]:
    return {
        "path": obj.path,
        "realpath": obj.realpath,
        "layer": obj.entry.layer,
        **_facts_data(obj.facts),
        "needed": [_edge_data(e) for e in closure.edges if e.requested_by == obj.path],
    }


class Closures:
    """Loads root objects in one image; the loader context is built once per kind of process."""

    def __init__(self, fs: FileSystem, settings: RunSettings) -> None:
        self.fs = fs
        self.settings = settings
        self._contexts: dict[tuple[str | None, int, int], LinkerContext] = {}
        self.warnings: list[str] = []

    def of(self, path: str) -> Closure:
        entry = self.fs.lookup(path.lstrip("/"))
        if entry is None:
            raise ImgscanError(f"{path}: no such file in the image")
        if entry.elf is None:
            raise ImgscanError(f"{path}: not an ELF file")
        if not entry.elf.dynamic:
            raise ImgscanError(f"{path}: not a dynamic executable")
        key = (entry.elf.interpreter, entry.elf.machine, entry.elf.elf_class)
        if key not in self._contexts:
            ctx = build_context(self.fs, entry.elf, self.settings)
            self.warnings += [w for w in ctx.warnings if w not in self.warnings]
            self._contexts[key] = ctx
        return load_closure(self.fs, path, entry, self._contexts[key])


def ldd_data(closures: Closures, roots: list[str]) -> dict[str, Any]:
    objects = []
    for path in roots:
        closure = closures.of(path)
        root = closure.root
        objects.append(
            {
                **_object_data(root, closure),
                "loads": [_edge_data(e) for e in closure.loads],
                "dlopen": [_edge_data(e) for e in closure.dlopens],
                "objects": [_object_data(o, closure) for o in closure.objects[1:]],
            }
        )
    llp = env_value(closures.settings.env, "LD_LIBRARY_PATH")
    return {
        "hwcaps": f"x86-64-{closures.settings.cpu.level}",
        "platform": closures.settings.cpu.platform_name(),
        "ld_library_path": llp.split(":") if llp else [],
        "objects": objects,
    }


def ldd_lines(closures: Closures, roots: list[str]) -> list[str]:
    """An lddtree-like tree: each object's needs under it, expanded where the object was first loaded."""
    lines: list[str] = []
    for path in roots:
        closure = closures.of(path)
        lines.append(f"{closure.root.realpath} (layer {closure.root.entry.layer})")
        children: dict[str, list[Edge]] = {}
        for edge in closure.edges:
            children.setdefault(edge.requested_by, []).append(edge)
        stack = [(edge, 1) for edge in reversed(children.get(closure.root.path, []))]
        while stack:
            edge, depth = stack.pop()
            where = edge.path or (
                "provided by the host driver" if edge.rule == "host-provided" else "not found"
            )
            detail = edge.rule + (f" of {edge.via}" if edge.via else "")
            layer = f" L{edge.layer}" if edge.layer is not None else ""
            lines.append(f"{'    ' * depth}{edge.name} => {where} [{detail}]{layer}")
            if edge.rule != LOADED and edge.path is not None:
                stack.extend((child, depth + 1) for child in reversed(children.get(edge.path, [])))
    return lines
