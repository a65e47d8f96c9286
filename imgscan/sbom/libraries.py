"""Every dynamically linked ELF file as a component, with the libraries it links and its CUDA facts.

Each object is the root of its own load (what `imgscan ldd --all` does), so an edge says what ld.so would
pick for that object's own DT_NEEDED: the rule is kept on the object as an imgscan:needed property, and an
edge that reached a file becomes a dependency on that file's component.
"""

from __future__ import annotations

from imgscan.cuda.report import CudaReport
from imgscan.cuda.stack import CudaLibrary
from imgscan.elf.facts import DF_1_PIE, ET_EXEC, ElfFacts
from imgscan.layers.fsview import FileSystem
from imgscan.linker.report import Closures, elf_objects
from imgscan.linker.search import HOST, Edge
from imgscan.sbom.model import APPLICATION, LIBRARY, NS, Item


def file_ref(path: str) -> str:
    return "file:" + path


def _kind(facts: ElfFacts) -> str:
    """An executable (ET_EXEC, or a PIE) is an application; everything else ld.so maps is a library."""
    return APPLICATION if facts.elf_type == ET_EXEC or facts.flags_1 & DF_1_PIE else LIBRARY


def _needed(edge: Edge) -> str:
    """One resolved DT_NEEDED as ldd's text shows it: 'libc.so.6 => /usr/lib/.../libc.so.6 [ld.so.cache]'."""
    where = edge.realpath or ("provided by the host driver" if edge.rule == HOST else "not found")
    return f"{edge.name} => {where} [{edge.rule}{f' of {edge.via}' if edge.via else ''}]"


def cuda_rule(lib: CudaLibrary) -> str:
    """The rule torch's process loads a CUDA library by, with the object whose rpath it was."""
    return lib.rule + (f" of {lib.via}" if lib.via else "")


def _cuda_properties(lib: CudaLibrary) -> list[tuple[str, str]]:
    """The CUDA table's row: family, version and its evidence, the rule torch's process loads it by, and
    the copies it shadows."""
    props = [
        (NS + "cuda-family", lib.name),
        (NS + "cuda-rule", cuda_rule(lib)),
    ]
    if lib.version:
        props.append((NS + "version", lib.version))
    props += [
        (NS + "version-evidence", f"{e.source} {e.version} ({e.confidence}): {e.detail}")
        for e in lib.evidence
    ]
    props += [(NS + "cuda-shadows", path) for path in lib.shadowed]
    return props


def library_items(
    fs: FileSystem,
    closures: Closures,
    owners: dict[str, str],
    layer_ids: dict[int, str],
    cuda: CudaReport,
) -> tuple[list[Item], dict[str, list[str]]]:
    """(one Item per ELF object, ref -> refs of the objects its DT_NEEDED resolved to).

    owners: canonical path -> ref of the package that owns the file; layer_ids: layer index -> digest.
    """
    cuda_by_path: dict[str, list[CudaLibrary]] = {}
    for lib in cuda.libraries:
        if lib.realpath:
            cuda_by_path.setdefault(lib.realpath, []).append(lib)
    paths = elf_objects(fs)
    known = set(paths)
    items, depends = [], {}
    for path in paths:
        entry = fs.lookup(path.lstrip("/"))
        assert entry is not None and entry.elf is not None  # elf_objects lists only dynamic ELF files
        closure = closures.of(path)
        direct = [e for e in closure.edges if e.requested_by == closure.root.path]
        props = [(NS + "path", path), *((NS + "needed", _needed(e)) for e in direct)]
        if entry.layer in layer_ids:
            props.append((NS + "layer", layer_ids[entry.layer]))
        libs = cuda_by_path.get(path, [])
        for lib in libs:
            props += _cuda_properties(lib)
        item = Item(
            ref=file_ref(path),
            kind=_kind(entry.elf),
            name=entry.elf.soname or path.rsplit("/", 1)[1],
            version=next((lib.version for lib in libs if lib.version), None),
            sha256=entry.sha256,
            parent=owners.get(path),
            properties=sorted(set(props)),
        )
        items.append(item)
        targets = {
            e.realpath
            for e in direct
            if e.realpath is not None and e.realpath in known and e.realpath != path
        }
        depends[item.ref] = sorted(file_ref(t) for t in targets)
    return items, depends
