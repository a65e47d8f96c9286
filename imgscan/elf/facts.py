"""ElfFacts: everything the linker emulation and the CUDA analysis need from one ELF file."""

from __future__ import annotations

from dataclasses import dataclass, field

ET_EXEC = 2
ET_DYN = 3
EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183
EM_PPC64 = 21
DF_1_NODEFLIB = 0x800
DF_1_PIE = 0x08000000


@dataclass(slots=True)
class ElfFacts:
    """Read from the ELF header, program headers, PT_INTERP, PT_DYNAMIC, its string table and PT_NOTE.

    rpath/runpath are None when the tag is absent, else the raw colon-separated string split on ':'
    (empty elements kept: they mean the current directory). strings holds what the string probes found
    in the whole file: probe name -> sorted unique matches (e.g. 'dlopen' -> ['libcuda.so.1']).
    complete is False when the file ended early or a needed region could not be read (then the facts
    that could be read are kept and the reason is in problem).
    """

    elf_class: int  # 32 or 64
    little_endian: bool
    machine: int  # e_machine
    elf_type: int  # e_type
    dynamic: bool = False  # has PT_DYNAMIC: something ld.so links (static binaries have none)
    interpreter: str | None = None
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: list[str] | None = None
    runpath: list[str] | None = None
    flags: int = 0  # DT_FLAGS
    flags_1: int = 0  # DT_FLAGS_1
    build_id: str | None = None
    strings: dict[str, list[str]] = field(default_factory=dict)
    complete: bool = True
    problem: str | None = None

    @property
    def nodeflib(self) -> bool:
        return bool(self.flags_1 & DF_1_NODEFLIB)
