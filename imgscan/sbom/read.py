"""Read a CycloneDX 1.4-1.6 JSON SBOM back into a plain summary, for diffing SBOMs of two images or of two
tools. imgscan's own SBOMs give everything (packages, ELF objects with their CUDA facts, findings);
another tool's (syft's) give package-level data: name, version, purl, ecosystem.

Plain JSON, not cyclonedx-python-lib's deserializer: a foreign SBOM with a field the library does not
model must still read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from packageurl import PackageURL

from imgscan.errors import ImgscanError
from imgscan.sbom.model import NS

SPEC_VERSIONS = ("1.4", "1.5", "1.6")
# purl type -> imgscan's ecosystem name (Package.ecosystem); other types keep their purl type.
_ECOSYSTEMS = {"deb": "deb", "apk": "apk", "rpm": "rpm", "pypi": "python", "conda": "conda"}


def _props(component: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for prop in component.get("properties") or []:
        if isinstance(prop, dict) and "name" in prop:
            out.setdefault(prop["name"], []).append(str(prop.get("value", "")))
    return out


def _first(props: dict[str, list[str]], name: str) -> str | None:
    values = props.get(NS + name)
    return values[0] if values else None


def _sha256(component: dict[str, Any]) -> str | None:
    return next((h.get("content") for h in component.get("hashes") or [] if h.get("alg") == "SHA-256"), None)


def _walk(
    components: list[dict[str, Any]], parent: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every component with the one it is nested in (an owned library's package)."""
    for component in components:
        yield component, parent
        yield from _walk(component.get("components") or [], component)


def _ecosystem(purl: str, props: dict[str, list[str]]) -> str:
    declared = _first(props, "ecosystem")
    if declared:
        return declared
    try:
        kind = PackageURL.from_string(purl).type
    except ValueError:
        kind = purl.removeprefix("pkg:").split("/", 1)[0]
    return _ECOSYSTEMS.get(kind, kind)


def _tools(metadata: dict[str, Any]) -> list[str]:
    """'name version' of each tool: 1.4 lists tools, 1.5+ has {components: [...], services: [...]}."""
    tools = metadata.get("tools") or []
    if isinstance(tools, dict):
        tools = [*(tools.get("components") or []), *(tools.get("services") or [])]
    return sorted(" ".join(filter(None, (t.get("name"), t.get("version")))) for t in tools)


def load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ImgscanError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ImgscanError(f"{path}: not JSON: {e}") from None


def is_cyclonedx(data: Any) -> bool:
    return isinstance(data, dict) and data.get("bomFormat") == "CycloneDX"


def _check(data: Any, path: str) -> dict[str, Any]:
    if not is_cyclonedx(data):
        raise ImgscanError(f"{path}: not a CycloneDX JSON document")
    if data.get("specVersion") not in SPEC_VERSIONS:
        raise ImgscanError(
            f"{path}: CycloneDX {data.get('specVersion')} is not supported ({', '.join(SPEC_VERSIONS)})"
        )
    return data


def _needed(values: list[str]) -> dict[str, str]:
    """imgscan:needed 'NAME => WHERE [RULE]' -> {NAME: 'WHERE [RULE]'}."""
    return dict(sorted(v.split(" => ", 1) for v in values if " => " in v))


def _json_values(props: dict[str, list[str]], name: str) -> list[Any]:
    out = []
    for value in props.get(NS + name, []):
        try:
            out.append(json.loads(value))
        except ValueError:
            continue
    return out


def _config(props: dict[str, list[str]]) -> dict[str, Any]:
    """The image's runtime config and layers, from imgscan's image properties (empty for other tools)."""
    layers = []
    for value in props.get(NS + "image-layer", []):
        index, digest, diff_id = ([*value.split(" "), "-", "-"])[:3]
        if index.isdigit():
            layers.append((int(index), {"digest": _dash(digest), "diff_id": _dash(diff_id)}))
    entry, cmd = (_json_values(props, key) for key in ("entrypoint", "cmd"))
    return {
        "platform": _first(props, "platform"),
        "env": dict(e.split("=", 1) if "=" in e else (e, "") for e in props.get(NS + "env", [])),
        "entrypoint": entry[0] if entry else None,
        "cmd": cmd[0] if cmd else None,
        "labels": {
            k.removeprefix(NS + "label:"): v[-1] for k, v in props.items() if k.startswith(NS + "label:")
        },
        "layers": [layer for _, layer in sorted(layers, key=lambda pair: pair[0])],
    }


def _dash(value: str) -> str | None:
    return None if value == "-" else value


def read_cyclonedx_json(path: str) -> dict[str, Any]:
    """The summary of a CycloneDX JSON file (see summarize)."""
    return summarize(_check(load_json(path), path))


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """{spec_version, tools, image, config, os, packages, libraries, torch, cuda, findings}; lists sorted, so
    two summaries compare with ==. libraries (imgscan's only): path, name, version, cuda_family, sha256,
    layer, owner (the owning package's purl), links (paths its DT_NEEDED resolved to) and needed (each
    DT_NEEDED name -> 'WHERE [RULE]'). config: platform, env, entrypoint, cmd, labels, layers. torch: each
    install's path, version, cuda, pins; cuda: each library torch loads (name, version, path, rule)."""
    metadata = data.get("metadata") or {}
    image = metadata.get("component")
    os_info, packages, libraries = None, [], {}
    for component, parent in _walk(data.get("components") or []):
        props = _props(component)
        path_prop = _first(props, "path")
        if component.get("type") == "operating-system":
            os_info = {"name": component.get("name"), "version": component.get("version")}
        elif path_prop is not None:
            libraries[component.get("bom-ref")] = {
                "path": path_prop,
                "name": component.get("name"),
                "kind": component.get("type"),
                "version": component.get("version"),
                "cuda_family": _first(props, "cuda-family"),
                "sha256": _sha256(component),
                "layer": _first(props, "layer"),
                "owner": parent.get("purl") if parent else None,
                "needed": _needed(props.get(NS + "needed", [])),
            }
        elif component.get("purl"):
            packages.append(
                {
                    "name": component.get("name"),
                    "version": component.get("version"),
                    "purl": component["purl"],
                    "ecosystem": _ecosystem(component["purl"], props),
                    "location": _first(props, "location"),
                    "layer": _first(props, "layer"),
                }
            )
    for dependency in data.get("dependencies") or []:
        library = libraries.get(dependency.get("ref"))
        if library is not None:
            targets = (libraries.get(ref) for ref in dependency.get("dependsOn") or [])
            library["links"] = sorted(t["path"] for t in targets if t is not None)
    image_props = _props(image) if isinstance(image, dict) else {}
    metadata_props = _props(metadata)
    return {
        "spec_version": data["specVersion"],
        "tools": _tools(metadata),
        "image": {
            "name": image.get("name"),
            "version": image.get("version"),
            "purl": image.get("purl"),
            "sha256": _sha256(image),
        }
        if isinstance(image, dict)
        else None,
        "os": os_info,
        "packages": sorted(packages, key=lambda p: (p["purl"], p["location"] or "")),
        "libraries": sorted(
            ({"links": [], **lib} for lib in libraries.values()), key=lambda lib: lib["path"]
        ),
        "config": _config(image_props),
        "torch": sorted(_json_values(metadata_props, "torch-install"), key=lambda t: str(t.get("path"))),
        "cuda": sorted(_json_values(metadata_props, "cuda-library"), key=lambda c: str(c.get("name"))),
        "findings": sorted(metadata_props.get(NS + "finding", [])),
    }
