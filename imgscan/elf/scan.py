"""Streaming ELF facts extractor: one pass over the bytes, front to back, with bounded memory.

A layer's files are read once from a tar stream, so nothing can seek. The ELF header and program headers
sit at the front; PT_INTERP, PT_DYNAMIC and PT_NOTE are captured when the stream passes them. The dynamic
string table is the hard part: the dynamic section says where it is, but it may lie before PT_DYNAMIC
(normal ld layout: .dynstr near the start) or after it (patchelf'd libraries such as torch's append it at
the end). So the file prefix is kept speculatively up to min(PT_DYNAMIC, RETAIN_CAP) and dropped as soon as
the dynamic section is parsed; a table that lies ahead is captured on the way, only around the strings
that are needed. String probes scan the whole file for a literal needle at C speed and run their regex
only around the hits, keeping a small overlap tail between chunks.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgscan.elf.facts import ElfFacts
from imgscan.errors import ImgscanError

ELF_MAGIC = b"\x7fELF"
READ_CHUNK = 1 << 20
BATCH = 64 << 10  # tiny chunks from a caller are coalesced, so the cost per byte does not depend on them
RETAIN_CAP = 32 << 20  # the most of the file prefix kept while the string table's place is unknown
PHDR_LIMIT = 1 << 20  # program headers must end within this prefix
MAX_PHNUM = 4096
INTERP_CAP = 4096
DYNAMIC_CAP = 1 << 20
NOTE_CAP = 64 << 10  # per PT_NOTE segment (a build-id note is 36 bytes)
NOTES_CAP = 1 << 20  # over all PT_NOTE segments
STRING_CAP = 64 << 10  # one name or search path (Spack-style padded RPATHs run to kilobytes)
STRINGS_CAP = RETAIN_CAP  # all the string ranges captured after PT_DYNAMIC, together
WINDOW = 256  # a probe's match, with MARGIN bytes of context, must lie within WINDOW bytes of its needle
MARGIN = 16  # context a pattern's lookbehind/lookahead may need
CLUSTER_MAX = 64 << 10  # nearby needle hits share one regex pass, up to this many bytes
JOINT = CLUSTER_MAX + 4 * WINDOW  # bytes of a new chunk copied after the previous tail
MAX_MATCHES = 4096  # unique matches kept per probe

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH = 0, 1, 5, 10, 14, 15
DT_RUNPATH, DT_FLAGS, DT_FLAGS_1 = 29, 30, 0x6FFFFFFB
NT_GNU_BUILD_ID = 3
_NAME_TAGS = (DT_SONAME, DT_RPATH, DT_RUNPATH)


@dataclass(frozen=True)
class StringProbe:
    """Collects every match of pattern around each occurrence of needle in the whole file.

    needle is the literal the matches must contain (searched at C speed over the whole file); each match,
    with MARGIN bytes of context for its lookarounds, must fit in WINDOW bytes on either side of it.
    Adding one is a line: StringProbe("nccl", b"NCCL version ", re.compile(rb"NCCL version [0-9.+a-z]+")).
    """

    name: str
    needle: bytes
    pattern: re.Pattern[bytes]


# A whole token starting with 'lib' and ending in '.so' plus numeric versions: '/usr/lib/libfoo.so.1' gives
# 'libfoo.so.1', cuDNN 9's unversioned 'libcudnn_ops.so' is kept, 'xlibfoo.so' and 'libfoo.so.1a' are not.
DLOPEN = StringProbe(
    "dlopen",
    b".so",
    re.compile(rb"(?<![\w+.-])lib[\w+.-]{0,200}?\.so(?:\.[0-9]{1,9}){0,8}(?![\w+-]|\.[\w+-])"),
)
# Version strings the CUDA analysis reads as evidence: NCCL's 'NCCL version 2.30.7+cuda13.3'.
VERSION = StringProbe(
    "version", b"NCCL version ", re.compile(rb"NCCL version [0-9]+\.[0-9]+\.[0-9]+(?:\+cuda[0-9.]+)?")
)
DEFAULT_PROBES: tuple[StringProbe, ...] = (DLOPEN, VERSION)


@dataclass(eq=False)
class _Want:
    """A byte range [start, end) being captured from the stream; done() gets it (short if the file ended)."""

    start: int
    end: int
    data: bytearray
    done: Callable[[bytes], None]

    @property
    def next(self) -> int:
        return self.start + len(self.data)


class _ProbeScanner:
    """Runs the string probes over the stream; between chunks only a tail of about WINDOW bytes is kept."""

    def __init__(self, probes: Sequence[StringProbe]) -> None:
        self._probes = tuple(probes)
        # sre's literal search runs about twice as fast as bytes.find on CPython 3.11 (memchr on a prefix)
        self._finders = tuple(re.compile(re.escape(p.needle)) for p in self._probes)
        self.found: dict[str, set[str]] = {p.name: set() for p in self._probes}
        self._next = [0] * len(self._probes)  # file offset where each probe's next needle search starts
        self._tail = b""
        self._tail_start = 0

    def feed(self, chunk: bytes, final: bool) -> None:
        """Searches the chunk in place; only the joint with the previous tail is copied."""
        c0 = self._tail_start + len(self._tail)
        if self._tail:
            joint = self._tail + chunk[:JOINT]
            if len(chunk) <= JOINT:
                self._run(joint, self._tail_start, None, final)
                return
            # hits in the chunk's first WINDOW bytes need the tail; every cluster from them fits in the joint
            self._run(joint, self._tail_start, c0 + WINDOW, False)
        self._run(chunk, c0, None, final)

    def _run(self, buf: bytes, start: int, stop: int | None, final: bool) -> None:
        for i, probe in enumerate(self._probes):
            self._next[i] = self._search(probe, self._finders[i], buf, start, self._next[i], stop, final)
        if stop is None:
            keep = min(max(min(self._next) - WINDOW, start), start + len(buf))
            self._tail, self._tail_start = buf[keep - start :], keep

    def _search(
        self,
        probe: StringProbe,
        finder: re.Pattern[bytes],
        buf: bytes,
        start: int,
        nxt: int,
        stop: int | None,
        final: bool,
    ) -> int:
        """Matches around hits from nxt (up to stop); returns where the next search starts.

        Hits whose windows overlap are handled as one cluster with one regex pass, so a file full of
        needles costs O(size / WINDOW) Python steps, not one per hit. A cluster that runs past the end of
        buf waits for more bytes unless the stream is final.
        """
        needle, n = probe.needle, len(probe.needle)
        pos = nxt - start
        limit = len(buf) if stop is None else stop - start + n - 1
        while True:
            hit = finder.search(buf, pos, limit)
            if hit is None:
                return start + max(pos, limit - n + 1)
            q = hit.start()
            first, s, e = q, max(q - WINDOW, 0), q + n + WINDOW
            while e - s < CLUSTER_MAX:
                r = buf.rfind(needle, q + 1, e)
                if r < 0:
                    break
                q, e = r, r + n + WINDOW
            if e > len(buf) and not final:
                return start + first
            e = min(e, len(buf))
            # a lookaround near a cut edge cannot see past it: drop matches there (their own cluster has them)
            lo = s + MARGIN if s == 0 and start > 0 else s
            hi = e if final and e == len(buf) else e - MARGIN
            self._match(probe, buf, s, e, lo, hi)
            pos = q + 1

    def _match(self, probe: StringProbe, buf: bytes, s: int, e: int, lo: int, hi: int) -> None:
        found = self.found[probe.name]
        for m in probe.pattern.finditer(buf, s, e):
            token = m.group()
            if lo <= m.start() and m.end() <= hi and probe.needle in token and len(found) < MAX_MATCHES:
                found.add(token.decode("ascii", "replace"))


class ElfScanner:
    """Feed a file's bytes in order (any chunk sizes, size bytes in all); finish() gives its ElfFacts.

    Memory stays O(RETAIN_CAP) whatever the file size: a 500 MB library keeps at most its prefix up to
    PT_DYNAMIC (capped), the capped PT_INTERP/PT_DYNAMIC/PT_NOTE bytes and the needed strings' ranges.
    """

    def __init__(self, size: int, probes: Sequence[StringProbe] = DEFAULT_PROBES) -> None:
        self._size = size
        self._pos = 0  # file offset of the first byte not yet consumed
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._prefix = bytearray()  # the file's bytes [0, len(prefix)), while they may still be needed
        self._retain_end = RETAIN_CAP
        self._rejected = False  # not an ELF (or not one we can read): the rest of the stream is ignored
        self._facts: ElfFacts | None = None
        self._fmt = ""  # struct byte order
        self._phoff = self._phentsize = self._phnum = 0
        self._phdrs_done = False
        self._loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset) of each PT_LOAD
        self._dyn_offset: int | None = None
        self._wants: list[_Want] = []
        self._problems: list[str] = []
        self._tags: dict[int, int] = {}  # last value of each tag, as in glibc's get-dynamic-info.h
        self._needed_offs: list[int] = []
        self._strings: dict[int, str] = {}  # string table offset -> decoded string
        self._build_ids: dict[int, str] = {}  # PT_NOTE index -> build-id (notes arrive in file order)
        self._probes = _ProbeScanner(probes) if probes else None

    def feed(self, chunk: bytes) -> None:
        if self._rejected or not chunk:
            return
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        if self._pending_len >= BATCH:
            self._flush()

    def finish(self) -> ElfFacts | None:
        """The facts read (complete=False with the reasons in problem), or None when it is not an ELF."""
        self._flush()
        facts = self._facts
        if self._rejected or facts is None:
            return None
        if self._probes is not None:
            self._probes.feed(b"", final=True)
        if self._pos < self._size:
            self._problem(f"the stream ended after {self._pos} of {self._size} bytes")
        if not self._phdrs_done and not self._problems:
            self._problem("the file ends before its program headers")
        while self._wants:  # what the file ended before; each done() records why it is short
            want = self._wants.pop(0)
            want.done(bytes(want.data))
        self._prefix = bytearray()
        if self._build_ids:
            facts.build_id = self._build_ids[min(self._build_ids)]
        self._collect_names(facts)
        if self._probes is not None:
            own = {*facts.needed, facts.soname}
            for name, found in self._probes.found.items():
                kept = sorted(found - own) if name == DLOPEN.name else sorted(found)
                if kept:
                    facts.strings[name] = kept
        facts.complete = not self._problems
        facts.problem = "; ".join(self._problems) or None
        return facts

    # -- the stream ------------------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        if self._pos + len(chunk) > self._size:
            raise ImgscanError(f"ELF stream longer than its announced size {self._size}")
        self._consume(chunk)

    def _consume(self, chunk: bytes) -> None:
        c0 = self._pos
        if len(self._prefix) == c0 and c0 < self._retain_end:
            self._prefix += chunk[: self._retain_end - c0]
        if self._facts is None:
            self._parse_header()
            if self._rejected:
                self._prefix = bytearray()
                return
        if self._facts is not None and not self._phdrs_done:
            self._parse_phdrs()
        self._serve(chunk, c0)
        self._pos = c0 + len(chunk)
        if self._probes is not None:
            self._probes.feed(chunk, final=False)

    def _serve(self, chunk: bytes, c0: int) -> None:
        """Gives each want its part of this chunk; wants a done() adds go to the end and are served too."""
        c1 = c0 + len(chunk)
        i = 0
        while i < len(self._wants):
            want = self._wants[i]
            lo, hi = max(want.next, c0), min(want.end, c1)
            if lo < hi:
                want.data += chunk[lo - c0 : hi - c0]
            if want.next >= want.end:
                del self._wants[i]
                want.done(bytes(want.data))
            else:
                i += 1

    def _request(self, start: int, end: int, done: Callable[[bytes], None], what: str) -> None:
        """Calls done() with the file's bytes [start, end): now if they are kept, else when they pass by."""
        data = bytearray(self._prefix[start:end]) if start < len(self._prefix) else bytearray()
        want = _Want(start, end, data, done)
        if want.next >= end:
            done(bytes(data))
        elif want.next < self._pos:
            self._problem(
                f"{what} at file offset {start:#x} had passed by before PT_DYNAMIC "
                f"({self._dyn_offset or 0:#x}) said where it is, and only the prefix up to "
                f"min(PT_DYNAMIC, {RETAIN_CAP >> 20} MiB) is kept"
            )
        else:
            self._wants.append(want)

    def _problem(self, text: str) -> None:
        self._problems.append(text)

    # -- headers ---------------------------------------------------------------------------------------

    def _parse_header(self) -> None:
        head = self._prefix
        if len(head) >= 4 and head[:4] != ELF_MAGIC:
            self._rejected = True
        if len(head) < 6 or self._rejected:
            return
        cls, data = head[4], head[5]
        if cls not in (1, 2) or data not in (1, 2):
            self._rejected = True
            return
        endian, wide = "<" if data == 1 else ">", cls == 2
        fmt = endian + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH")
        if len(head) < 16 + struct.calcsize(fmt):
            return
        e_type, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = struct.unpack_from(fmt, head, 16)
        self._fmt = endian
        self._facts = ElfFacts(
            elf_class=64 if wide else 32, little_endian=data == 1, machine=machine, elf_type=e_type
        )
        self._phoff, self._phentsize, self._phnum = phoff, phentsize, phnum
        phdr_size = 56 if wide else 32
        if phnum == 0:
            self._stop_structure()
        elif phnum > MAX_PHNUM or phentsize < phdr_size:
            self._give_up(f"absurd program header table (e_phnum {phnum}, e_phentsize {phentsize})")
        elif phoff + phnum * phentsize > PHDR_LIMIT:
            self._give_up(f"program headers at {phoff:#x} end beyond the first {PHDR_LIMIT >> 20} MiB")

    def _give_up(self, text: str) -> None:
        self._problem(text)
        self._stop_structure()

    def _stop_structure(self) -> None:
        """Keeps the header facts, reads nothing more of the structure (the probes still run)."""
        self._phdrs_done = True
        self._retain_end = 0
        self._prefix = bytearray()

    def _parse_phdrs(self) -> None:
        facts = self._facts
        assert facts is not None
        end = self._phoff + self._phnum * self._phentsize
        if len(self._prefix) < end:
            return
        self._phdrs_done = True
        wide = facts.elf_class == 64
        fmt = self._fmt + ("IIQQQQQQ" if wide else "IIIIIIII")
        dynamic: tuple[int, int] | None = None
        interp: tuple[int, int] | None = None  # the first, as the kernel takes it
        notes: list[tuple[int, int, int]] = []  # (offset, filesz, align)
        for i in range(self._phnum):
            fields = struct.unpack_from(fmt, self._prefix, self._phoff + i * self._phentsize)
            if wide:
                p_type, _, offset, vaddr, _, filesz, _, align = fields
            else:
                p_type, offset, vaddr, _, filesz, _, _, align = fields
            if p_type == PT_LOAD:
                self._loads.append((vaddr, filesz, offset))
            elif p_type == PT_DYNAMIC:
                dynamic = (offset, filesz)  # the last, as glibc's loader takes it
            elif p_type == PT_INTERP and interp is None:
                interp = (offset, filesz)
            elif p_type == PT_NOTE:
                notes.append((offset, filesz, align))
        self._retain_end = min(dynamic[0], RETAIN_CAP) if dynamic else 0
        if interp:
            self._request(interp[0], interp[0] + min(interp[1], INTERP_CAP), self._on_interp, "PT_INTERP")
        budget = NOTES_CAP
        for index, (offset, filesz, align) in enumerate(notes):
            size = min(filesz, NOTE_CAP, budget)
            budget -= size
            self._request(offset, offset + size, self._note_handler(index, size, align), "PT_NOTE")
        if dynamic:
            facts.dynamic = True
            self._dyn_offset = dynamic[0]
            size = min(dynamic[1], DYNAMIC_CAP)
            self._request(dynamic[0], dynamic[0] + size, self._dynamic_handler(size), "PT_DYNAMIC")
        del self._prefix[self._retain_end :]

    def _on_interp(self, data: bytes) -> None:
        assert self._facts is not None
        self._facts.interpreter = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if b"\0" not in data:
            self._problem("PT_INTERP is cut short or not NUL-terminated")

    def _note_handler(self, index: int, size: int, align: int) -> Callable[[bytes], None]:
        def done(data: bytes) -> None:
            if len(data) < size:
                self._problem("the file ends inside a PT_NOTE segment")
            build_id = self._find_build_id(data, 8 if align == 8 else 4)
            if build_id is not None:
                self._build_ids[index] = build_id

        return done

    def _find_build_id(self, data: bytes, align: int) -> str | None:
        """The GNU build-id in hex; 8-aligned note segments pad as binutils and glibc read them."""
        off, fmt = 0, self._fmt + "III"
        while off + 12 <= len(data):
            namesz, descsz, n_type = struct.unpack_from(fmt, data, off)
            name_at = off + 12
            desc_at = name_at + -(-namesz // align) * align
            if n_type == NT_GNU_BUILD_ID and data[name_at : name_at + namesz] == b"GNU\0":
                return data[desc_at : desc_at + descsz].hex() if desc_at + descsz <= len(data) else None
            off = desc_at + -(-descsz // align) * align
        return None

    # -- the dynamic section and its strings --------------------------------------------------------------

    def _dynamic_handler(self, size: int) -> Callable[[bytes], None]:
        def done(data: bytes) -> None:
            if len(data) < size:
                self._problem("the file ends inside PT_DYNAMIC")
            self._parse_dynamic(data)

        return done

    def _parse_dynamic(self, data: bytes) -> None:
        facts = self._facts
        assert facts is not None
        fmt = self._fmt + ("qQ" if facts.elf_class == 64 else "iI")
        width = struct.calcsize(fmt)
        ended = False
        for tag, value in struct.iter_unpack(fmt, data[: len(data) - len(data) % width]):
            if tag == DT_NULL:
                ended = True
                break
            if tag == DT_NEEDED:
                self._needed_offs.append(value)
            else:
                self._tags[tag] = value
        if not ended and len(data) >= DYNAMIC_CAP:
            self._problem(f"no DT_NULL in the first {DYNAMIC_CAP >> 20} MiB of PT_DYNAMIC")
        facts.flags = self._tags.get(DT_FLAGS, 0)
        facts.flags_1 = self._tags.get(DT_FLAGS_1, 0)
        self._request_strings()
        self._retain_end = 0
        self._prefix = bytearray()

    def _request_strings(self) -> None:
        """Asks for a capped range after each needed string's offset, merged where the ranges overlap."""
        offsets = sorted({*self._needed_offs, *(self._tags[t] for t in _NAME_TAGS if t in self._tags)})
        if not offsets:
            return
        if DT_STRTAB not in self._tags:
            self._problem("PT_DYNAMIC names libraries but has no DT_STRTAB")
            return
        strtab = self._file_offset(self._tags[DT_STRTAB])
        if strtab is None:
            self._problem(f"DT_STRTAB {self._tags[DT_STRTAB]:#x} is in no PT_LOAD's file bytes")
            return
        strsz = self._tags.get(DT_STRSZ, 0)
        ranges: list[list[int]] = []  # [start, end, offsets...] in string table offsets
        for off in offsets:
            end = off + STRING_CAP if off >= strsz else min(off + STRING_CAP, strsz)
            if ranges and off < ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], end)
                ranges[-1].append(off)
            else:
                ranges.append([off, end, off])
        if sum(r[1] - r[0] for r in ranges) > STRINGS_CAP:
            self._problem(f"the needed strings span more than {STRINGS_CAP >> 20} MiB of the string table")
            return
        for lo, hi, *offs in ranges:
            self._request(
                strtab + lo, strtab + hi, self._strings_handler(lo, offs), "the dynamic string table"
            )

    def _strings_handler(self, base: int, offsets: list[int]) -> Callable[[bytes], None]:
        def done(data: bytes) -> None:
            bad = 0
            for off in offsets:
                raw = data[off - base :]
                nul = raw.find(b"\0")
                if nul < 0:
                    bad += 1
                else:
                    self._strings[off] = raw[:nul].decode("utf-8", "surrogateescape")
            if bad:
                self._problem(f"{bad} dynamic string(s) from table offset {base:#x} cut short or over 64 KiB")

        return done

    def _file_offset(self, vaddr: int) -> int | None:
        for start, filesz, offset in self._loads:
            if start <= vaddr < start + filesz:
                return offset + vaddr - start
        return None

    def _collect_names(self, facts: ElfFacts) -> None:
        strings = self._strings
        facts.needed = [strings[o] for o in self._needed_offs if o in strings]
        if DT_SONAME in self._tags:
            facts.soname = strings.get(self._tags[DT_SONAME])
        if DT_RPATH in self._tags and self._tags[DT_RPATH] in strings:
            facts.rpath = strings[self._tags[DT_RPATH]].split(":")
        if DT_RUNPATH in self._tags and self._tags[DT_RUNPATH] in strings:
            facts.runpath = strings[self._tags[DT_RUNPATH]].split(":")


def scan_elf_stream(
    read: Callable[[int], bytes], size: int, probes: Sequence[StringProbe] = DEFAULT_PROBES
) -> ElfFacts | None:
    """Pulls size bytes through an ElfScanner in READ_CHUNK pieces (a short read ends the stream)."""
    scanner = ElfScanner(size, probes)
    left = size
    while left > 0:
        chunk = read(min(READ_CHUNK, left))
        if not chunk:
            break
        scanner.feed(chunk)
        left -= len(chunk)
    return scanner.finish()


def read_elf_file(path: str, probes: Sequence[StringProbe] = DEFAULT_PROBES) -> ElfFacts | None:
    """An ELF on the host, read through the same streaming scanner as image files."""
    try:
        with open(path, "rb") as f:
            return scan_elf_stream(f.read, os.fstat(f.fileno()).st_size, probes)
    except OSError as e:
        raise ImgscanError(f"cannot read {path}: {e.strerror}") from e
