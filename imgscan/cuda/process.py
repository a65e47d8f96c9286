"""torch's libraries as loaded into the image's Python process, following what `import torch` does.

The interpreter that owns torch's site directory is the executable (its RPATH applies: conda's python
carries $ORIGIN/../lib). torch/__init__.py dlopens torch/lib/libtorch_global_deps.so RTLD_GLOBAL; when
that fails on a missing CUDA library it preloads each nvidia/<pkg>/lib library found on sys.path
(_preload_cuda_deps) and retries; then it imports torch/_C. Where the image has no such interpreter (slim
or scratch images) each torch library is the root of its own load, as `ld.so --list LIB` does.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from imgscan.cuda.families import family_of
from imgscan.cuda.torch import TorchInstall
from imgscan.errors import ImgscanError
from imgscan.layers.entry import DIR, FILE, HARDLINK
from imgscan.layers.fsview import FileSystem
from imgscan.linker.context import LinkerContext, RunSettings, build_context
from imgscan.linker.search import LOADED, NOT_FOUND, Edge, Process

PRELOAD = "torch-preload"
_SITE = re.compile(r"^(?P<prefix>.*)/lib/python(?P<ver>\d+\.\d+)/(site|dist)-packages$")
_PYTHON3_DIST = re.compile(r"^/usr/lib/python3/dist-packages$")


@dataclass
class TorchProcess:
    """What one torch install loads: as a Python process, or (no interpreter) library by library."""

    install: TorchInstall
    interpreter: str | None  # image path of the python executable, None when the image has none
    processes: list[Process]  # one process, or one per torch library when there is no interpreter
    preloaded: list[Edge]


def interpreter_for(fs: FileSystem, site_dir: str) -> str | None:
    """The python executable whose sys.path holds site_dir, if the image has it as a dynamic ELF."""
    candidates = []
    match = _SITE.match(site_dir)
    if match:
        prefix, ver = match.group("prefix"), match.group("ver")
        candidates += [f"{prefix}/bin/python{ver}", f"{prefix}/bin/python3", f"{prefix}/bin/python"]
        if prefix == "/usr/local":  # Debian's python puts pip installs in /usr/local/lib/pythonX.Y
            candidates += [f"/usr/bin/python{ver}", "/usr/bin/python3"]
    elif _PYTHON3_DIST.match(site_dir):
        candidates += ["/usr/bin/python3"]
    for path in candidates:
        try:
            entry = fs.lookup(path.lstrip("/"))
        except ImgscanError:  # a symlink loop in a hostile image: not an interpreter
            continue
        if entry is not None and entry.elf is not None and entry.elf.dynamic and entry.elf.interpreter:
            return path
    return None


def _torch_libraries(fs: FileSystem, install: TorchInstall) -> list[str]:
    """torch/lib/*.so* and torch/_C*.so: the roots when there is no interpreter."""
    paths = []
    for top in (f"{install.torch_dir}/lib", install.torch_dir):
        node = fs.lookup(top.lstrip("/"))
        if node is None or node.kind != DIR:
            continue
        for name, child in sorted((node.children or {}).items()):
            is_lib = ".so" in name and (top.endswith("/lib") or name.startswith("_C"))
            if is_lib and child.kind in (FILE, HARDLINK) and child.elf is not None and child.elf.dynamic:
                paths.append(f"{top}/{name}")
    return paths


def _preload_candidates(fs: FileSystem, site_dir: str, missing: set[str]) -> list[str]:
    """nvidia/<pkg>/lib libraries of the missing CUDA families, as _preload_cuda_deps globs them."""
    found = []
    nvidia = fs.lookup(f"{site_dir}/nvidia".lstrip("/"))
    for pkg, node in sorted((nvidia.children or {}).items()) if nvidia and nvidia.kind == DIR else []:
        lib = (node.children or {}).get("lib")
        for name, child in sorted((lib.children or {}).items()) if lib and lib.kind == DIR else []:
            if (
                family_of(name) in missing
                and child.kind in (FILE, HARDLINK)
                and re.search(r"\.so\.\d+$", name)
            ):
                found.append(f"{site_dir}/nvidia/{pkg}/lib/{name}")
    return found


def torch_process(fs: FileSystem, install: TorchInstall, settings: RunSettings) -> TorchProcess:
    python = interpreter_for(fs, install.site_dir)
    if python is None:
        processes = []
        for path in _torch_libraries(fs, install):
            entry = fs.lookup(path.lstrip("/"))
            assert entry is not None and entry.elf is not None
            ctx = build_context(fs, entry.elf, settings)
            processes.append(Process(fs, ctx, path, entry, as_listed=True))
        return TorchProcess(install, None, processes, [])
    entry = fs.lookup(python.lstrip("/"))
    assert entry is not None and entry.elf is not None
    ctx: LinkerContext = build_context(fs, entry.elf, settings)
    process = Process(fs, ctx, python, entry)
    preloaded: list[Edge] = []
    global_deps = f"{install.torch_dir}/lib/libtorch_global_deps.so"
    if fs.lookup(global_deps.lstrip("/")) is not None:
        first = len(process.loads)
        process.dlopen(global_deps, process.root)
        missing = {family_of(e.name) for e in process.loads[first:] if e.rule == NOT_FOUND} - {None}
        if missing:
            # the dlopen failed and mapped nothing; torch preloads from sys.path, then retries
            process = Process(fs, ctx, python, entry)
            for path in _preload_candidates(fs, install.site_dir, missing):  # type: ignore[arg-type]
                preloaded.append(process.dlopen(path, process.root, rule=PRELOAD))
            process.dlopen(global_deps, process.root)
    for path in _torch_libraries(fs, install):
        if posixpath.basename(path).startswith("_C"):
            process.dlopen(path, process.root)
    _dlopen_torch_own(process, install)
    return TorchProcess(install, python, [process], preloaded)


def _dlopen_torch_own(process: Process, install: TorchInstall) -> None:
    """torch's libraries dlopen others of torch/lib on first use (libtorch_cuda -> libtorch_cuda_linalg,
    which needs cuSOLVER): load those, from the object that holds the name, so their CUDA needs count."""
    torch_lib = f"{install.torch_dir}/lib/"
    for obj in list(process.loader.objects):
        if not obj.realpath.startswith(torch_lib):
            continue
        for name in obj.facts.strings.get("dlopen", ()):
            edge = process.loader.peek(name, obj)
            if edge.realpath and edge.realpath.startswith(torch_lib) and edge.rule != LOADED:
                process.dlopen(name, obj)
