"""The one diff function: two summaries (imgscan.sbom.read.summarize, whether from an SBOM file or an
image) -> what changed, as JSON-ready data. It never sees where a summary came from, so diffing two images
and diffing their SBOMs give the same result."""

from __future__ import annotations

from typing import Any

from packaging.utils import canonicalize_name

from imgscan.diff.versions import compare_versions

LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
FAIL_ON = ("cuda-change", "downgrade", "new-finding", "any")


def _mapping(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """{added: {k: v}, removed: {k: v}, changed: {k: {before, after}}}."""
    return {
        "added": {k: after[k] for k in sorted(after.keys() - before.keys())},
        "removed": {k: before[k] for k in sorted(before.keys() - after.keys())},
        "changed": {
            k: {"before": before[k], "after": after[k]}
            for k in sorted(before.keys() & after.keys())
            if before[k] != after[k]
        },
    }


def _changed(before: Any, after: Any) -> dict[str, Any] | None:
    return None if before == after else {"before": before, "after": after}


def _layers(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Layers by diff_id (the uncompressed content): shared, added, removed."""
    ids_before = [layer["diff_id"] for layer in before if layer["diff_id"]]
    ids_after = [layer["diff_id"] for layer in after if layer["diff_id"]]
    return {
        "shared": [i for i in ids_before if i in ids_after],
        "added": [i for i in ids_after if i not in ids_before],
        "removed": [i for i in ids_before if i not in ids_after],
    }


def _image(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    ca, cb = a["config"], b["config"]
    digest = _changed((a["image"] or {}).get("version"), (b["image"] or {}).get("version"))
    env = _mapping(ca["env"], cb["env"])
    return {
        "digest": digest,
        "platform": _changed(ca["platform"], cb["platform"]),
        "env": env,
        "ld_library_path": _changed(ca["env"].get(LD_LIBRARY_PATH), cb["env"].get(LD_LIBRARY_PATH)),
        "entrypoint": _changed(ca["entrypoint"], cb["entrypoint"]),
        "cmd": _changed(ca["cmd"], cb["cmd"]),
        "labels": _mapping(ca["labels"], cb["labels"]),
        "layers": _layers(ca["layers"], cb["layers"]),
    }


def _by_name(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name, n = str(row.get(key)), 2
        while name in out:  # the same family loaded by two torch installs
            name, n = f"{row.get(key)}#{n}", n + 1
        out[name] = row
    return out


def _cuda(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each CUDA library whose version, path or rule differs (or that appears or goes)."""
    fields = ("version", "path", "rule")
    before, after = _by_name(a, "name"), _by_name(b, "name")
    rows = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        side = [{f: lib.get(f) for f in fields} if lib else None for lib in (old, new)]
        if side[0] != side[1]:
            rows.append({"name": name, "before": side[0], "after": side[1]})
    return rows


def _torch(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    before, after = _by_name(a, "path"), _by_name(b, "path")
    rows = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path) or {}, after.get(path) or {}
        if old != new:
            rows.append(
                {
                    "path": path,
                    "version": _changed(old.get("version"), new.get("version")),
                    "cuda": _changed(old.get("cuda"), new.get("cuda")),
                    "pins": _mapping(old.get("pins") or {}, new.get("pins") or {}),
                }
            )
    return rows


def _linkage(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each ELF object in both, every DT_NEEDED that now resolves elsewhere (or by another rule)."""
    before = {lib["path"]: lib.get("needed") or {} for lib in a}
    rows = []
    for lib in b:
        old = before.get(lib["path"])
        if old is None:
            continue
        new = lib.get("needed") or {}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                rows.append(
                    {"object": lib["path"], "needed": name, "before": old.get(name), "after": new.get(name)}
                )
    return rows


def _package_key(package: dict[str, Any]) -> tuple[str, str]:
    ecosystem, name = package["ecosystem"], str(package["name"])
    return ecosystem, canonicalize_name(name) if ecosystem == "python" else name


def _packages(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """By (ecosystem, name): one version each side that differs is an upgrade or a downgrade; otherwise the
    versions only one side has (a name installed twice) are added or removed."""
    versions: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for side, rows in enumerate((a, b)):
        for p in rows:
            versions.setdefault(_package_key(p), ([], []))[side].append(p.get("version") or "")
    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    for (ecosystem, name), (old, new) in sorted(versions.items()):
        if sorted(old) == sorted(new):
            continue
        if len(old) == 1 and len(new) == 1:
            order = compare_versions(ecosystem, old[0], new[0])
            change = "upgraded" if order < 0 else "downgraded" if order > 0 else "rebuilt"
            out["changed"].append(
                {"ecosystem": ecosystem, "name": name, "before": old[0], "after": new[0], "change": change}
            )
            continue
        for key, only in (("removed", set(old) - set(new)), ("added", set(new) - set(old))):
            out[key] += [{"ecosystem": ecosystem, "name": name, "version": v} for v in sorted(only)]
    return out


def diff_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from a to b, section by section (docs/diff.md has the schema)."""
    return {
        "image": _image(a, b),
        "cuda": _cuda(a["cuda"], b["cuda"]),
        "torch": _torch(a["torch"], b["torch"]),
        "linkage": _linkage(a["libraries"], b["libraries"]),
        "findings": {
            "new": sorted(set(b["findings"]) - set(a["findings"])),
            "gone": sorted(set(a["findings"]) - set(b["findings"])),
        },
        "packages": _packages(a["packages"], b["packages"]),
    }


def _any_change(section: Any) -> bool:
    if isinstance(section, dict):
        return any(_any_change(v) for k, v in section.items() if k != "shared")
    return bool(section)


def fails(result: dict[str, Any], fail_on: str) -> bool:
    """Whether --fail-on applies: a CUDA library or torch changed, a package went down, a finding is new,
    or anything at all changed."""
    if fail_on == "cuda-change":
        return bool(result["cuda"] or result["torch"])
    if fail_on == "downgrade":
        return any(c["change"] == "downgraded" for c in result["packages"]["changed"])
    if fail_on == "new-finding":
        return bool(result["findings"]["new"])
    return _any_change({k: v for k, v in result.items() if k not in ("a", "b")})
