"""Version ordering per ecosystem: dpkg's for deb, PEP 440 for python, a token compare for the rest."""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

_EPOCH = re.compile(r"^(\d+):")
_TOKENS = re.compile(r"\d+|[A-Za-z]+")


def _dpkg_order(c: str) -> int:
    """dpkg's order of one character: '~' before the end of the string, letters before other symbols."""
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _dpkg_part(a: str, b: str) -> int:
    """verrevcmp() of dpkg's lib/dpkg/version.c: alternating non-digit and digit runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _dpkg_order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _dpkg_order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            first = first or (ord(a[i]) - ord(b[j]))
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first:
            return -1 if first < 0 else 1
    return 0


def _dpkg_split(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision): the revision follows the last '-'."""
    epoch = 0
    if m := _EPOCH.match(version):
        epoch, version = int(m.group(1)), version[m.end() :]
    upstream, dash, revision = version.rpartition("-")
    return (epoch, upstream, revision) if dash else (epoch, version, "")


def compare_deb(a: str, b: str) -> int:
    ea, ua, ra = _dpkg_split(a)
    eb, ub, rb = _dpkg_split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _dpkg_part(ua, ub) or _dpkg_part(ra, rb)


def _compare_tokens(a: str, b: str) -> int:
    """Numbers compare as numbers and rank above words (1.0 > 1.0rc1 is not claimed, only 1.10 > 1.9)."""
    ka = [(1, int(t), "") if t.isdigit() else (0, 0, t) for t in _TOKENS.findall(a)]
    kb = [(1, int(t), "") if t.isdigit() else (0, 0, t) for t in _TOKENS.findall(b)]
    return (ka > kb) - (ka < kb) or (a > b) - (a < b)


def compare_versions(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as a is older than, the same as, or newer than b in the ecosystem's ordering."""
    if ecosystem == "deb":
        return compare_deb(a, b)
    if ecosystem == "python":
        try:
            va, vb = Version(a), Version(b)
            return (va > vb) - (va < vb)
        except InvalidVersion:
            pass
    return _compare_tokens(a, b)
