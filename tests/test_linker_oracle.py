"""Acceptance: `imgscan ldd` agrees with the real ld.so on every ELF object of real images.

The oracle (tests/oracle.py) runs each image's own glibc loader in a chroot of its `umoci unpack`; imgscan
reads the OCI layout. For every object both sides list the whole closure as (NEEDED name, printed path) in
breadth-first order; any difference is a disagreement, and the test prints the count and the first 30.

Images (tests/linker_images.py): the crafted one (debootstrap + gcc-built objects for every search rule,
LD_LIBRARY_PATH in its Env), compared object by object and edge by edge (CRAFTED_EDGES names the rule and,
for RPATH, the object whose RPATH matched); and the torch tier (real torch 2.14.1 + nvidia wheels, slow).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import linker_images
from tests.conftest import BUILD_TIMES
from tests.linker_images import CRAFTED_EDGES, CRAFTED_REUSED, Edge, LinkerImage
from tests.oracle import RTLD64, Oracle, Trace, find_elf_objects, hwcaps_mask

SHOW = 30
Pair = tuple[str, str | None]


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    if os.geteuid() != 0:
        pytest.skip("the ld.so oracle chroots into the unpacked image: needs root")


@functools.cache
def host_cpu_platform() -> str:
    """glibc's platform name on this CPU (haswell on Intel v3+, x86_64 on AMD): the oracle runs here, so
    imgscan is told the same (an image can't say which CPU it will run on)."""
    out = subprocess.run([RTLD64, "--help"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"^\s+(\S+) \(AT_PLATFORM;", out, re.M)
    return m.group(1) if m else "x86_64"


def imgscan_ldd(ref: str, *args: str, timeout: float = 1500) -> dict:
    """`imgscan ldd REF ARGS --json`, parsed; fails the test with stderr on a non-zero exit."""
    cmd = [
        sys.executable,
        "-m",
        "imgscan",
        "ldd",
        ref,
        *args,
        "--cpu-platform",
        host_cpu_platform(),
        "--json",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    label = " ".join(a for a in args if not a.startswith("/"))[:36]
    BUILD_TIMES[f"imgscan ldd {ref.rsplit(':', 1)[-1]} {label}"] = time.monotonic() - start
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------------------
# comparison


def oracle_pairs(trace: Trace) -> list[Pair]:
    """The oracle's closure as imgscan names it: the loader's own line becomes (its soname, path)."""
    return [(os.path.basename(ld.name) if ld.interp else ld.name, ld.path) for ld in trace.loads or []]


def imgscan_pairs(obj: dict) -> list[Pair]:
    return [(ld["name"], ld["path"]) for ld in obj.get("loads") or []]


def _unique(pairs: Iterable[Pair]) -> list[Pair]:
    return list(dict.fromkeys(pairs))


def closure_differences(path: str, expected: list[Pair], got: list[Pair], interp: str | None) -> list[str]:
    """Disagreements for one object: a name resolved elsewhere, pairs only one side has, then the order
    (of distinct pairs, without the loader's own line, which ld.so lists where its searchlist puts it)."""
    out: list[str] = []
    exp_u, got_u = _unique(expected), _unique(got)
    exp_by_name: dict[str, set[str | None]] = {}
    got_by_name: dict[str, set[str | None]] = {}
    for n, p in exp_u:
        exp_by_name.setdefault(n, set()).add(p)
    for n, p in got_u:
        got_by_name.setdefault(n, set()).add(p)
    for name in dict.fromkeys([n for n, _ in exp_u] + [n for n, _ in got_u]):
        e, g = exp_by_name.get(name, set()), got_by_name.get(name, set())
        if e == g:
            continue
        if not g:
            out.append(f"{path}: {name} => {_fmt(e)} (ld.so); imgscan does not load it")
        elif not e:
            out.append(f"{path}: {name} => {_fmt(g)} (imgscan); ld.so does not load it")
        else:
            out.append(f"{path}: {name} => {_fmt(e)} (ld.so), {_fmt(g)} (imgscan)")
    if not out:
        e_order = [x for x in exp_u if x[0] != interp]
        g_order = [x for x in got_u if x[0] != interp]
        if e_order != g_order:
            i = next(i for i, (a, b) in enumerate(zip(e_order, g_order, strict=False)) if a != b)
            out.append(f"{path}: load order differs at #{i}: ld.so {e_order[i]}, imgscan {g_order[i]}")
    return out


def _fmt(paths: set[str | None]) -> str:
    return " | ".join(sorted(p or "not found" for p in paths))


@dataclass
class Comparison:
    """Every object's disagreements, plus what could not be compared and why."""

    compared: int
    mismatches: list[str]
    skipped: dict[str, str]
    imgscan_only: list[str]

    def report(self) -> str:
        lines = [
            f"{len(self.mismatches)} disagreements with ld.so over {self.compared} objects "
            f"({len(self.skipped)} without ground truth, {len(self.imgscan_only)} only in imgscan's list)"
        ]
        lines += [f"  {m}" for m in self.mismatches[:SHOW]]
        if len(self.mismatches) > SHOW:
            lines.append(f"  ... and {len(self.mismatches) - SHOW} more")
        return "\n".join(lines)


def compare(traces: dict[str, Trace], objects: list[dict]) -> Comparison:
    """Compare the oracle's traces with imgscan's `objects` (matched by path)."""
    by_path = {o["path"]: o for o in objects}
    mismatches: list[str] = []
    skipped: dict[str, str] = {}
    compared = 0
    for path, trace in traces.items():
        if trace.loads is None:
            skipped[path] = trace.skipped or "?"
            continue
        if trace.unparsed:
            mismatches.append(f"{path}: unparsed loader output {trace.unparsed[:3]}")
        obj = by_path.get(path)
        if obj is None:
            if trace.loads:  # a static object may be left out of a list of dynamically linked ones
                mismatches.append(f"{path}: ld.so loads {len(trace.loads)} objects; imgscan lacks the object")
            continue
        compared += 1
        interp = next((os.path.basename(ld.name) for ld in trace.loads if ld.interp), None)
        mismatches += closure_differences(path, oracle_pairs(trace), imgscan_pairs(obj), interp)
    only = sorted(set(by_path) - set(traces))
    return Comparison(compared, mismatches, skipped, only)


# --------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def crafted(debootstrap_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> LinkerImage:
    """The crafted linker image, built (about 20 s) and unpacked by umoci for the oracle."""
    _require("gcc", "umoci", "chroot")
    work = tmp_path_factory.mktemp("linker")
    img = linker_images.build_crafted(debootstrap_tar, work / "crafted")
    img.unpack(work / "crafted-unpacked")
    for k, v in img.timings.items():
        BUILD_TIMES[f"linker-crafted:{k}"] = v
    return img


@pytest.fixture(scope="module")
def crafted_level(crafted: LinkerImage) -> str:
    """The best glibc-hwcaps level this CPU lets the image's ld.so search: both sides assume it."""
    assert crafted.rootfs is not None
    levels = Oracle(crafted.rootfs).supported_levels()
    if not levels:
        pytest.skip("this CPU supports no glibc-hwcaps level: the hwcaps cases cannot be compared")
    return levels[0]


@pytest.fixture(scope="module")
def crafted_oracle(crafted: LinkerImage, crafted_level: str) -> Oracle:
    assert crafted.rootfs is not None
    return Oracle(crafted.rootfs, crafted.env, hwcaps_mask(crafted_level))


@pytest.fixture(scope="module")
def crafted_traces(crafted: LinkerImage, crafted_oracle: Oracle) -> dict[str, Trace]:
    """The oracle's trace of every ELF object in the crafted image (debootstrap's included)."""
    assert crafted.rootfs is not None
    start = time.monotonic()
    paths = find_elf_objects(crafted.rootfs)
    traces = crafted_oracle.trace_many(paths)
    BUILD_TIMES["linker-crafted:oracle"] = time.monotonic() - start
    return traces


@pytest.fixture(scope="module")
def crafted_all(crafted: LinkerImage, crafted_level: str) -> dict:
    """`imgscan ldd REF --all --json` on the crafted image."""
    return imgscan_ldd(crafted.ref, "--all", "--hwcaps", crafted_level)


def _expected_path(edge: Edge, oracle: Oracle, level: str) -> str | None:
    if edge.path is None:
        return None
    return edge.path.format(platform=oracle.platform() if "{platform}" in edge.path else "", level=level)


# --------------------------------------------------------------------------------------------------------
# the oracle side on its own (no imgscan needed): the edge table is what the real ld.so does


@pytest.mark.parametrize("edge", CRAFTED_EDGES, ids=[e.case for e in CRAFTED_EDGES])
def test_oracle_agrees_with_edge_table(
    edge: Edge, crafted_traces: dict[str, Trace], crafted_oracle: Oracle, crafted_level: str
) -> None:
    trace = crafted_traces[edge.obj]
    assert trace.loads is not None, trace.skipped
    want = (edge.name, _expected_path(edge, crafted_oracle, crafted_level))
    assert want in oracle_pairs(trace), f"{edge.case}: ld.so printed\n{trace.stdout}"


def test_oracle_reuse_and_skips(crafted_traces: dict[str, Trace]) -> None:
    """Reused NEEDED names are not printed; wrong-class/machine objects have no oracle; static is empty."""
    for obj, name in CRAFTED_REUSED:
        assert name not in [n for n, _ in oracle_pairs(crafted_traces[obj])], crafted_traces[obj].stdout
    assert crafted_traces["/opt/t/misc/lib32-only.so"].loads is None
    assert crafted_traces["/opt/t/misc/libarm-only.so"].loads is None
    static = crafted_traces.get("/opt/t/misc/static-exe")
    if static is not None:  # built only where gcc has libc.a
        assert (static.mode, static.loads) == ("static", [])
    assert crafted_traces["/opt/t/suid/bin/sgid-exe"].mode == "secure"
    assert crafted_traces["/opt/t/suid/bin/suid-exe"].mode == "ld.so"  # setuid root, run by root


def test_oracle_list_stops_at_first_missing_library(
    crafted_oracle: Oracle, crafted_traces: dict[str, Trace]
) -> None:
    """Why the oracle traces instead of using `ld.so --list`: glibc 2.36's --list prints nothing and exits
    127 at the first missing library, where the trace lists them all (runpath-exe misses librun2.so.1)."""
    exe = linker_images.RUNPATH_EXE
    ((rc, out, err),) = crafted_oracle.run_in_root([[RTLD64, "--list", exe]], crafted_oracle.env)
    assert (rc, out) == (127, ""), (rc, out, err)
    assert "librun2.so.1" in err
    assert ("librun2.so.1", None) in oracle_pairs(crafted_traces[exe])


# --------------------------------------------------------------------------------------------------------
# imgscan against the oracle


def test_crafted_every_object_agrees(crafted_traces: dict[str, Trace], crafted_all: dict) -> None:
    """Every ELF object of the crafted image (about 780: debootstrap's /usr/bin, /usr/lib/x86_64-linux-gnu,
    ... and the crafted cases), with the image's Env: zero disagreements."""
    result = compare(crafted_traces, crafted_all["objects"])
    print(result.report())
    assert result.compared > 700, result.report()
    assert not result.mismatches, result.report()


@pytest.mark.parametrize("edge", CRAFTED_EDGES, ids=[e.case for e in CRAFTED_EDGES])
def test_crafted_rule(edge: Edge, crafted_all: dict, crafted_oracle: Oracle, crafted_level: str) -> None:
    """Each rule's edge: the path ld.so prints, the rule imgscan names, and for RPATH whose RPATH it was."""
    objects = {o["path"]: o for o in crafted_all["objects"]}
    assert edge.obj in objects, f"imgscan --all has no {edge.obj}"
    entries = [ld for ld in objects[edge.obj]["loads"] if ld["name"] == edge.name]
    path = _expected_path(edge, crafted_oracle, crafted_level)
    hits = [ld for ld in entries if ld["path"] == path]
    assert hits, f"{edge.case}: want {edge.name} => {path}; imgscan has {entries}"
    assert {ld["rule"] for ld in hits} == {edge.rule}, f"{edge.case}: {hits}"
    if edge.rule == "rpath":
        assert {ld["via"] for ld in hits} == {edge.via}, f"{edge.case}: {hits}"


def test_crafted_reused_names_not_loaded(crafted_all: dict) -> None:
    objects = {o["path"]: o for o in crafted_all["objects"]}
    for obj, name in CRAFTED_REUSED:
        assert name not in [ld["name"] for ld in objects[obj]["loads"]], (obj, name)


@pytest.mark.parametrize("level", ["v2", "v3", "v4"])
def test_crafted_hwcaps_level(crafted: LinkerImage, level: str) -> None:
    """--hwcaps LEVEL against ld.so --glibc-hwcaps-mask (levels this CPU lacks cannot be checked)."""
    assert crafted.rootfs is not None
    if level not in Oracle(crafted.rootfs).supported_levels():
        pytest.skip(f"this CPU does not support x86-64-{level}")
    objs = [linker_images.HW_EXE, linker_images.CACHE_EXE, linker_images.RUNPATH_EXE, "/usr/bin/ls"]
    traces = Oracle(crafted.rootfs, crafted.env, hwcaps_mask(level)).trace_many(objs)
    result = compare(traces, imgscan_ldd(crafted.ref, *objs, "--hwcaps", level)["objects"])
    assert result.compared == len(objs) and not result.mismatches, result.report()


ENV_CASES = {
    "semicolon-separator": "/opt/t/llp2;/opt/t/llp",
    "origin-token": "$ORIGIN/../lib:/opt/t/llp",
    "empty": "",
    "relative-and-empty-elements": "::opt/t/llp",
}


@pytest.mark.parametrize("value", list(ENV_CASES.values()), ids=list(ENV_CASES))
def test_crafted_env_override(crafted: LinkerImage, crafted_level: str, value: str) -> None:
    """--env LD_LIBRARY_PATH=... replaces the image's value; compared with ld.so given the same."""
    assert crafted.rootfs is not None
    objs = [linker_images.RUNPATH_EXE, linker_images.RPATH_EXE, "/opt/t/runpath/lib/librun1.so.1"]
    env = {**crafted.env, "LD_LIBRARY_PATH": value}
    traces = Oracle(crafted.rootfs, env, hwcaps_mask(crafted_level)).trace_many(objs)
    got = imgscan_ldd(crafted.ref, *objs, "--hwcaps", crafted_level, "--env", f"LD_LIBRARY_PATH={value}")
    result = compare(traces, got["objects"])
    assert result.compared == len(objs) and not result.mismatches, result.report()


SYMLINKED = {
    "exec-via-dir-symlink": ("/opt/t/app/bin/app-exe", True),
    "exec-via-file-symlink": ("/usr/local/bin/app-tool", True),
    "dlopen-via-symlinks": ("/opt/t/app/lib/libvend.so.1", False),
}


@pytest.mark.parametrize("case", list(SYMLINKED))
def test_crafted_object_named_through_symlink(crafted: LinkerImage, crafted_level: str, case: str) -> None:
    """An object named through symlinks (/opt/t/app -> app-1.0, /usr/local/bin/app-tool -> the exe,
    app-1.0/lib/libvend.so.1 -> ../../vendor/lib/libvend.so.1). For an executable the truth is a real exec:
    its $ORIGIN is the directory of its realpath (/proc/self/exe), while `ld.so PATH` (and so ldd) would use
    the directory of the path given. For a library, the loader opening that path (dlopen): $ORIGIN is the
    directory of the path opened, symlinks unresolved."""
    assert crafted.rootfs is not None
    obj, exec_mode = SYMLINKED[case]
    level_mask = None if exec_mode else hwcaps_mask(crafted_level)
    if exec_mode and Oracle(crafted.rootfs).supported_levels()[0] != crafted_level:
        pytest.skip("exec mode cannot mask glibc-hwcaps levels")
    trace = Oracle(crafted.rootfs, crafted.env, level_mask).trace_many([obj], exec_mode=exec_mode)[obj]
    assert trace.loads is not None, trace.skipped
    (got,) = imgscan_ldd(crafted.ref, obj, "--hwcaps", crafted_level)["objects"]
    interp = next((os.path.basename(ld.name) for ld in trace.loads if ld.interp), None)
    diffs = closure_differences(obj, oracle_pairs(trace), imgscan_pairs(got), interp)
    assert not diffs, "\n".join(diffs)


# --------------------------------------------------------------------------------------------------------
# the torch tier


@pytest.fixture(scope="session")
def torch_image(debootstrap_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkerImage]:
    """Real torch 2.14.1 + its nvidia wheels: the layout is cached (built in ~8 min), the ~5 GB unpack is
    made once per session (~2.5 min) and removed at its end."""
    _require("umoci", "chroot")
    work = tmp_path_factory.mktemp("linker-torch")
    try:
        img = linker_images.build_torch(debootstrap_tar, work / "torch")
    except linker_images.imagebuild.BuildError as exc:
        if "No matching distribution" in str(exc) or "Could not find a version" in str(exc):
            pytest.skip(f"torch wheels not available to pip here: {str(exc)[-300:]}")
        raise
    img.unpack(work / "torch-unpacked")
    for k, v in img.timings.items():
        BUILD_TIMES[f"linker-torch:{k}"] = v
    yield img
    shutil.rmtree(work / "torch-unpacked", ignore_errors=True)


@pytest.mark.slow
def test_torch_libraries_agree(torch_image: LinkerImage) -> None:
    """Every ELF object of the torch image with `--all` (the oracle costs well under a second), which must
    include every library of torch/lib and torch/_C*.so: closures identical to ld.so's."""
    assert torch_image.rootfs is not None
    torch_objs = linker_images.torch_objects(torch_image.rootfs)
    assert len(torch_objs) > 10, torch_objs
    levels = Oracle(torch_image.rootfs).supported_levels()
    level = levels[0] if levels else "v2"
    start = time.monotonic()
    oracle = Oracle(torch_image.rootfs, torch_image.env, hwcaps_mask(level))
    traces = oracle.trace_many(find_elf_objects(torch_image.rootfs))
    BUILD_TIMES["linker-torch:oracle"] = time.monotonic() - start
    got = imgscan_ldd(torch_image.ref, "--all", "--hwcaps", level)
    result = compare(traces, got["objects"])
    print(result.report())
    listed = {o["path"] for o in got["objects"]}
    assert not [p for p in torch_objs if p not in listed or traces[p].loads is None], result.report()
    assert not result.mismatches, result.report()
