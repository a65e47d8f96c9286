"""The streaming ELF scanner against real files: pyelftools (random access on disk) is the oracle.

Every ELF of this machine is fed as a stream in random chunk sizes; gcc/patchelf build the layouts that
matter (RPATH vs RUNPATH, NODEFLIB, 32-bit, .dynstr after .dynamic, a string table past the retained
prefix); the real libtorch_cuda.so is streamed out of the torch wheel to bound memory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import subprocess
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE, ENUM_E_TYPE

from imgscan.elf.facts import DF_1_NODEFLIB, DF_1_PIE, EM_386, EM_X86_64, ET_DYN, ElfFacts
from imgscan.elf.scan import BATCH, DEFAULT_PROBES, DLOPEN, RETAIN_CAP, ElfScanner, StringProbe, read_elf_file
from imgscan.errors import ImgscanError

HOST_ROOTS = ("/usr/lib/x86_64-linux-gnu", "/usr/bin", *sorted(glob.glob("/usr/lib/python3*")))
FIELDS = (
    "elf_class",
    "little_endian",
    "machine",
    "elf_type",
    "dynamic",
    "interpreter",
    "soname",
    "needed",
    "rpath",
    "runpath",
    "flags",
    "flags_1",
    "build_id",
)
TORCH = "torch==2.14.1"
TORCH_MEMBER = "torch/lib/libtorch_cuda.so"
WHEEL_CACHE = Path.home() / ".cache" / "imgscan-tests" / "wheels"
TORCH_RPATH = [
    "$ORIGIN/../../nvidia/cudnn/lib",
    "$ORIGIN/../../nvidia/nvshmem/lib",
    "$ORIGIN/../../nvidia/nccl/lib",
    "$ORIGIN/../../nvidia/cusparselt/lib",
    "$ORIGIN/../../nvidia/cu13/lib",
    "$ORIGIN",
]
TORCH_CUDA_NEEDED = [  # cuda-stack.md, in DT_NEEDED order
    "libtorch_nvshmem.so",
    "libc10_cuda.so",
    "libcudart.so.13",
    "libcusparse.so.12",
    "libcufft.so.12",
    "libcufile.so.0",
    "libcusparseLt.so.0",
    "libnccl.so.2",
    "libcurand.so.10",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcudnn.so.9",
    "libnvrtc.so.13",
]


# -- helpers ---------------------------------------------------------------------------------------------


def chunk_sizes(rng: random.Random) -> Iterator[int]:
    """Tiny, page-ish and multi-MiB chunks mixed, so every boundary case of the stream gets hit."""
    while True:
        yield rng.choice((rng.randint(1, 64), rng.randint(1, 8192), rng.randint(1, 3 << 20)))


def stream(
    data: bytes, rng: random.Random, size: int | None = None, probes=DEFAULT_PROBES
) -> ElfFacts | None:
    scanner = ElfScanner(len(data) if size is None else size, probes)
    pos = 0
    for n in chunk_sizes(rng):
        if pos >= len(data):
            break
        scanner.feed(data[pos : pos + n])
        pos += n
    return scanner.finish()


def stream_file(path: str, rng: random.Random) -> ElfFacts | None:
    with open(path, "rb") as f:
        scanner = ElfScanner(os.fstat(f.fileno()).st_size)
        for n in chunk_sizes(rng):
            chunk = f.read(n)
            if not chunk:
                break
            scanner.feed(chunk)
    return scanner.finish()


def latin1(value: object) -> object:
    """Our strings are utf-8/surrogateescape (as tar names are), pyelftools' latin-1: compare the bytes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    if isinstance(value, list):
        return [latin1(v) for v in value]
    return value


def ours(facts: ElfFacts) -> dict[str, object]:
    return {f: latin1(getattr(facts, f)) for f in FIELDS}


def oracle(path: str) -> dict[str, object]:
    """pyelftools with random access: first PT_INTERP (kernel), last PT_DYNAMIC and last tag (glibc)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        machine, e_type = elf.header["e_machine"], elf.header["e_type"]
        out: dict[str, object] = {
            "elf_class": elf.elfclass,
            "little_endian": elf.little_endian,
            "machine": ENUM_E_MACHINE.get(machine, machine),
            "elf_type": ENUM_E_TYPE.get(e_type, e_type),
            "dynamic": False,
            "interpreter": None,
            "soname": None,
            "needed": [],
            "rpath": None,
            "runpath": None,
            "flags": 0,
            "flags_1": 0,
            "build_id": None,
        }
        dynamic = None
        for seg in elf.iter_segments():
            kind = seg["p_type"]
            if kind == "PT_INTERP" and out["interpreter"] is None:
                out["interpreter"] = seg.get_interp_name()
            elif kind == "PT_DYNAMIC":
                dynamic = seg
            elif kind == "PT_NOTE" and out["build_id"] is None:
                for note in seg.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                        out["build_id"] = note["n_desc"]
                        break
        if dynamic is not None:
            out["dynamic"] = True
            needed: list[str] = []
            for tag in dynamic.iter_tags():
                name = tag.entry.d_tag
                if name == "DT_NEEDED":
                    needed.append(tag.needed)
                elif name == "DT_SONAME":
                    out["soname"] = tag.soname
                elif name == "DT_RPATH":
                    out["rpath"] = tag.rpath.split(":")
                elif name == "DT_RUNPATH":
                    out["runpath"] = tag.runpath.split(":")
                elif name == "DT_FLAGS":
                    out["flags"] = tag.entry.d_val
                elif name == "DT_FLAGS_1":
                    out["flags_1"] = tag.entry.d_val
            out["needed"] = needed
    return out


def whole_file_matches(data: bytes, probe: StringProbe) -> set[str]:
    """The probe's definition without streaming: the regex over the whole file at once."""
    return {m.group().decode("ascii") for m in probe.pattern.finditer(data) if probe.needle in m.group()}


def host_elfs() -> list[str]:
    seen: set[tuple[int, int]] = set()
    paths: list[str] = []
    for root in HOST_ROOTS:
        for dirpath, _, names in os.walk(root):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not os.path.isfile(path) or os.path.islink(path) or (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    with open(path, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            paths.append(path)
                except OSError:
                    continue
    return paths


def gcc(out: Path, source: str, *args: str, name: str = "t.c") -> Path:
    src = out.parent / name
    src.write_text(source)
    subprocess.run(["gcc", "-fPIC", "-o", str(out), str(src), *args], check=True, capture_output=True)
    return out


def section_offsets(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        return {s.name: s["sh_offset"] for s in ELFFile(f).iter_sections()}


LIB_SRC = "int answer(void) { return 42; }\n"


# -- (a) every ELF on this machine -----------------------------------------------------------------------


def test_matches_pyelftools_on_every_host_elf() -> None:
    paths = host_elfs()
    assert len(paths) > 300, f"only {len(paths)} ELF files under {HOST_ROOTS}"
    rng = random.Random(1234)
    mismatches: list[str] = []
    oracle_errors: list[str] = []
    probe_checked = 0
    start = time.monotonic()
    for path in paths:
        try:
            expected = oracle(path)
        except Exception as e:  # pyelftools refuses some files; they are reported, not compared
            oracle_errors.append(f"{path}: {e}")
            continue
        facts = stream_file(path, rng)
        if facts is None or not facts.complete:
            mismatches.append(f"{path}: {facts}")
            continue
        got = ours(facts)
        diff = {k: (got[k], expected[k]) for k in FIELDS if got[k] != expected[k]}
        if diff:
            mismatches.append(f"{path}: {diff}")
        if os.path.getsize(path) <= 4 << 20:  # the probe against its whole-file definition
            probe_checked += 1
            own = {*facts.needed, facts.soname}
            want = sorted(whole_file_matches(Path(path).read_bytes(), DLOPEN) - own)
            if facts.strings.get("dlopen", []) != want:
                mismatches.append(f"{path}: dlopen {facts.strings.get('dlopen')} != {want}")
    elapsed = time.monotonic() - start
    print(
        f"{len(paths)} ELF files, {probe_checked} probe-checked, {len(oracle_errors)} refused by pyelftools"
    )
    assert not mismatches, f"{len(mismatches)} mismatches of {len(paths)}:\n" + "\n".join(mismatches[:10])
    assert len(oracle_errors) < len(paths) // 100, oracle_errors[:5]
    assert elapsed < 60


# -- (b) layouts built here --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtags", ["--enable-new-dtags", "--disable-new-dtags"])
def test_rpath_and_runpath(tmp_path: Path, dtags: str) -> None:
    lib = gcc(
        tmp_path / "libt.so",
        LIB_SRC,
        "-shared",
        "-Wl,-soname,libt.so.1",
        "-Wl,-rpath,$ORIGIN/a::/opt/b",
        f"-Wl,{dtags}",
        "-Wl,--no-as-needed",
        "-lz",
    )
    facts = read_elf_file(str(lib))
    assert facts is not None and facts.complete
    assert facts.soname == "libt.so.1"
    assert facts.needed == ["libz.so.1", "libc.so.6"]
    paths = ["$ORIGIN/a", "", "/opt/b"]  # the empty element means the current directory to ld.so
    if dtags == "--enable-new-dtags":
        assert (facts.runpath, facts.rpath) == (paths, None)
    else:
        assert (facts.rpath, facts.runpath) == (paths, None)
    assert ours(facts) == oracle(str(lib))


def test_nodefaultlib_and_pie_executable(tmp_path: Path) -> None:
    lib = gcc(tmp_path / "libn.so", LIB_SRC, "-shared", "-Wl,-z,nodefaultlib")
    facts = read_elf_file(str(lib))
    assert facts is not None and facts.nodeflib and facts.flags_1 & DF_1_NODEFLIB
    exe = gcc(tmp_path / "prog", "int main(void) { return 0; }\n", "-pie")
    facts = read_elf_file(str(exe))
    assert facts is not None and facts.complete
    assert facts.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert (facts.elf_type, facts.machine, facts.elf_class) == (ET_DYN, EM_X86_64, 64)
    assert facts.flags_1 & DF_1_PIE and not facts.nodeflib


def test_32_bit(tmp_path: Path) -> None:
    probe = subprocess.run(
        ["gcc", "-m32", "-x", "c", "-", "-o", os.devnull], input=b"int main(){}", capture_output=True
    )
    if probe.returncode:
        pytest.skip("gcc -m32 needs gcc-multilib (apt-get install -y gcc-multilib)")
    lib = gcc(
        tmp_path / "lib32.so",
        LIB_SRC,
        "-m32",
        "-shared",
        "-Wl,-soname,lib32.so.7",
        "-Wl,-rpath,/opt/32",
        "-Wl,--no-as-needed",
    )
    facts = stream(lib.read_bytes(), random.Random(32))
    assert facts is not None and facts.complete
    assert (facts.elf_class, facts.machine, facts.little_endian) == (32, EM_386, True)
    assert (facts.soname, facts.needed, facts.runpath) == ("lib32.so.7", ["libc.so.6"], ["/opt/32"])
    assert ours(facts) == oracle(str(lib))


def _patchelfed(tmp_path: Path, pad_mib: int) -> Path:
    """A library whose .dynstr patchelf moved to the end of the file, after .dynamic (as torch's are)."""
    if shutil.which("patchelf") is None:
        pytest.skip("needs patchelf (apt-get install -y patchelf)")
    src = f"const char pad[{pad_mib} << 20] = {{1}};\n{LIB_SRC}"
    lib = gcc(tmp_path / "libp.so", src, "-shared", "-Wl,-soname,libp.so", "-Wl,--no-as-needed", "-lz")
    rpath = ":".join(TORCH_RPATH)
    subprocess.run(["patchelf", "--force-rpath", "--set-rpath", rpath, str(lib)], check=True)
    sections = section_offsets(lib)
    assert sections[".dynstr"] > sections[".dynamic"], "patchelf did not move .dynstr after .dynamic"
    return lib


@pytest.mark.parametrize("pad_mib", [0, 3])
def test_dynstr_after_dynamic(tmp_path: Path, pad_mib: int) -> None:
    lib = _patchelfed(tmp_path, pad_mib)
    data = lib.read_bytes()
    expected = oracle(str(lib))
    assert expected["rpath"] == TORCH_RPATH
    for seed in range(20):  # with 3 MiB of padding the string table is captured as the stream passes it
        facts = stream(data, random.Random(seed))
        assert facts is not None and facts.complete, facts
        assert ours(facts) == expected


def test_go_internal_linker_layout(tmp_path: Path) -> None:
    """Go's own linker puts .dynstr after .text and .rodata, outside the first PT_LOAD: still read."""
    if shutil.which("go") is None:
        pytest.skip("needs the Go toolchain (apt-get install -y golang-go)")
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n\t"net"\n)\n\nfunc main() { fmt.Println(net.ParseIP("::1")) }\n'
    )
    cache = Path.home() / ".cache" / "imgscan-tests" / "go-build"
    env = {**os.environ, "GOCACHE": str(cache), "GOPATH": str(tmp_path / "gopath")}
    subprocess.run(["go", "build", "-o", "prog", "."], cwd=tmp_path, env=env, check=True, capture_output=True)
    prog = tmp_path / "prog"
    with open(prog, "rb") as f:
        elf = ELFFile(f)
        first_load = next(s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        dynstr = elf.get_section_by_name(".dynstr")["sh_offset"]
    assert dynstr > first_load["p_offset"] + first_load["p_filesz"], "not the Go internal-linker layout"
    expected = oracle(str(prog))
    assert expected["needed"] == ["libc.so.6"]
    for seed in range(5):
        facts = stream(prog.read_bytes(), random.Random(seed))
        assert facts is not None and facts.complete and ours(facts) == expected


def test_string_table_before_dynamic_beyond_retain_cap(tmp_path: Path) -> None:
    """A 33 MiB note pushes .dynstr past RETAIN_CAP, 2 MiB of .rodata keep .dynamic further on."""
    src = (
        '__attribute__((section(".note.big"), used)) static const char big[33 << 20] = {1};\n'
        "const char pad[2 << 20] = {1};\n"
        "int f(void) { return big[3] + pad[5]; }\n"
    )
    lib = gcc(tmp_path / "libbig.so", src, "-shared", "-Wl,-soname,libbig.so.1")
    sections = section_offsets(lib)
    assert RETAIN_CAP < sections[".dynstr"] < sections[".dynamic"] - (1 << 20)
    facts = stream(lib.read_bytes(), random.Random(5))
    assert facts is not None and not facts.complete
    assert facts.problem and "dynamic string table" in facts.problem and "32 MiB" in facts.problem
    with open(lib, "rb") as f:  # pyelftools would walk the 33 MiB note: read the build-id section only
        note = next(ELFFile(f).get_section_by_name(".note.gnu.build-id").iter_notes())
    assert facts.soname is None and facts.build_id == note["n_desc"]


def test_dlopen_probe(tmp_path: Path) -> None:
    src = (
        'const char *a = "libfoo_plugin.so.3", *b = "/opt/x/libbar.so", *c = "xlibnot.so";\n'
        'const char *d = "libbad.so.1a", *e = "libcudnn_ops.so", *f = "libcuda.so.1";\n'
        'const char *g = "%s.%d", *h = "load libz.so.1. then";\n'
    )
    lib = gcc(
        tmp_path / "libprobe.so", src, "-shared", "-Wl,-soname,libprobe.so.2", "-Wl,--no-as-needed", "-lz"
    )
    data = lib.read_bytes()
    expected = ["libbar.so", "libcuda.so.1", "libcudnn_ops.so", "libfoo_plugin.so.3"]
    for seed in range(10):
        facts = stream(data, random.Random(seed))
        assert facts is not None and facts.needed == ["libz.so.1", "libc.so.6"]
        assert facts.strings == {"dlopen": expected}  # own NEEDED (libz.so.1 too) and SONAME left out
    assert whole_file_matches(data, DLOPEN) - {"libz.so.1", "libc.so.6", "libprobe.so.2"} == set(expected)
    version = StringProbe("zlib", b"libz.so", DLOPEN.pattern)
    facts = stream(data, random.Random(0), probes=(*DEFAULT_PROBES, version))
    assert facts is not None and facts.strings["zlib"] == ["libz.so.1"]  # other probes keep own names


def test_truncated_files(tmp_path: Path) -> None:
    """Cut anywhere, announced or not: None or complete=False, never another exception, never a hang."""
    lib = _patchelfed(tmp_path, 0)
    data = lib.read_bytes()
    with open(lib, "rb") as f:
        dynamic = next(s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_DYNAMIC")
        dyn_mid = dynamic["p_offset"] + dynamic["p_filesz"] // 2
    for cut in (100, 64, dyn_mid):  # the brief's three: the file itself is that short
        facts = stream(data[:cut], random.Random(cut))
        assert facts is None or not facts.complete, cut
    whole = oracle(str(lib))
    rng = random.Random(7)
    cuts = sorted({*range(0, 200), *rng.sample(range(len(data)), 300), dyn_mid, len(data) - 1})
    for cut in cuts:
        for size in (cut, len(data)):  # a short file, and a stream that stops before its size
            facts = stream(data[:cut], random.Random(cut), size=size)
            if facts is None or not facts.complete:
                assert facts is None or facts.problem, cut
            else:  # only the section headers were cut off: nothing the facts come from
                assert size == cut and ours(facts) == whole, cut


@pytest.mark.timeout(120)
def test_corrupted_headers_never_raise(tmp_path: Path) -> None:
    """Real libraries with random bytes overwritten in their headers and dynamic section."""
    lib = _patchelfed(tmp_path, 0)
    data = lib.read_bytes()
    rng = random.Random(99)
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.choice((rng.randrange(64), rng.randrange(64, 64 + 56 * 12), rng.randrange(len(data))))
            mutated[pos] = rng.randrange(256)
        with contextlib.suppress(ImgscanError):
            stream(bytes(mutated), rng)


def test_not_elf_and_overlong_stream(tmp_path: Path) -> None:
    for data in (
        b"",
        b"\x7fEL",
        b"#!/bin/sh\necho libfoo.so.1\n",
        Path("/usr/share/common-licenses/GPL-3").read_bytes(),
    ):
        assert stream(data, random.Random(1)) is None
    assert stream(b"\x7fELF\x03\x01" + bytes(58), random.Random(1)) is None  # no such ELF class
    scanner = ElfScanner(10)
    with pytest.raises(ImgscanError):
        scanner.feed(bytes(BATCH))
    with pytest.raises(ImgscanError):
        read_elf_file(str(tmp_path / "missing.so"))


# -- (c) the real 500 MB library, streamed out of the torch wheel -------------------------------------------


def torch_wheel() -> Path:
    """The torch wheel pip finds (the local index has it), cached across sessions."""
    wheels = sorted(WHEEL_CACHE.glob("torch-2.14.1-*.whl"))
    if not wheels:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(
            ["pip", "download", "-q", "--no-deps", TORCH, "-d", str(WHEEL_CACHE)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(WHEEL_CACHE.glob("torch-2.14.1-*.whl"))
        if run.returncode or not wheels:
            pytest.skip(f"pip download {TORCH} failed: {run.stderr[-300:]}")
    return wheels[0]


@pytest.mark.slow
def test_libtorch_cuda_from_wheel_in_bounded_memory() -> None:
    with zipfile.ZipFile(torch_wheel()) as wheel:
        info = wheel.getinfo(TORCH_MEMBER)
        assert info.file_size > 400 << 20
        tracemalloc.start()
        try:
            with wheel.open(info) as member:
                scanner = ElfScanner(info.file_size)
                while chunk := member.read(1 << 20):
                    scanner.feed(chunk)
                facts = scanner.finish()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert facts is not None and facts.complete, facts
    assert facts.soname == "libtorch_cuda.so"
    assert facts.needed[: len(TORCH_CUDA_NEEDED)] == TORCH_CUDA_NEEDED
    assert {"libc10.so", "libtorch_cpu.so", "libc.so.6"} <= set(facts.needed)
    assert facts.rpath == TORCH_RPATH and facts.runpath is None
    assert "libcuda.so.1" in facts.strings["dlopen"]
    assert not {*facts.needed, facts.soname} & set(facts.strings["dlopen"])
    assert peak < 100 << 20, f"peak {peak >> 20} MiB"
