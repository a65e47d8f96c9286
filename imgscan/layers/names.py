"""Entry names from an image are untrusted: turn them into clean image-relative paths or refuse them."""

from __future__ import annotations

MAX_PATH_BYTES = 4096


def clean_path(name: str) -> str | None:
    """Normalise a tar/squashfs entry name to 'a/b/c' relative to the image root ('' is the root).

    A leading '/' or './' is dropped (as tar and umoci do); '.' and empty components vanish; '..'
    pops a component. Returns None for a name that would climb above the root, holds a NUL, or is longer
    than PATH_MAX: the caller skips such an entry and warns.
    """
    if "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return None
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def split_parent(path: str) -> tuple[str, str]:
    """('a/b', 'c') for 'a/b/c'; ('', 'c') for 'c'."""
    head, _, tail = path.rpartition("/")
    return head, tail
