"""SBOMs (`imgscan sbom`, `scan -o`): checked by cyclonedx-python-lib's validators (strict JSON schema and
XML schema, CycloneDX 1.6 and 1.5) and spdx-tools' validator, on the bundled demo image and on real
images; compared with what `packages`, `ldd --all` and `cuda` report; the same bytes for the same image;
the same components from every form of one rootfs; and read back by the decoder, ours and syft's."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgscan.catalog.model import Package
from imgscan.errors import ImgscanError
from imgscan.layers.index import Limits
from imgscan.layers.scan import scan_image
from imgscan.linker.report import elf_objects
from imgscan.sbom.build import package_depends, package_refs
from imgscan.sbom.identity import image_info
from imgscan.sbom.model import LIBRARY, PACKAGE, ImageInfo, Item, Sbom
from imgscan.sbom.output import render
from imgscan.sbom.read import read_cyclonedx_json
from imgscan.sources.image import Image
from imgscan.sources.refs import open_image
from tests.imagebuild import DOCKER_REPO_TAG, FINAL_TAG, ImageSet
from tests.sbomcheck import assert_valid
from tests.syftrun import run_syft

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo"
OCI, SIF = str(DEMO / "oci"), str(DEMO / "demo.sif")
DEMO_DIGEST = "sha256:6d542d1533d10faf35ca0b87dccaa75932ea3fe071b04bc5f089f50f24f55347"
SITE = "/usr/local/lib/python3.11/dist-packages"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
IMAGE_SETS = ["mini", pytest.param("deb", marks=pytest.mark.slow)]
# file name -> (format, CycloneDX version) of every document the demo is checked in
DOCUMENTS = {
    "cdx16.json": ("cyclonedx-json", "1.6"),
    "cdx15.json": ("cyclonedx-json", "1.5"),
    "cdx16.xml": ("cyclonedx-xml", "1.6"),
    "cdx15.xml": ("cyclonedx-xml", "1.5"),
    "doc.spdx.json": ("spdx-json", None),
}


def cli_args(name: str) -> list[str]:
    fmt, version = DOCUMENTS[name]
    return ["--format", fmt, *(["--spec-version", version] if version else [])]


def imgscan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgscan", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def sbom_file(ref: str, out: Path, *args: str) -> Path:
    proc = imgscan("sbom", ref, "-o", out, *args)
    assert proc.returncode == 0, proc.stderr
    return out


def json_of(*args: str | Path) -> dict:
    proc = imgscan(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def walk(components: list[dict], parent: dict | None = None):
    for c in components:
        yield c, parent
        yield from walk(c.get("components", []), c)


def props(component: dict, name: str) -> list[str]:
    return [p["value"] for p in component.get("properties", []) if p["name"] == "imgscan:" + name]


def component_set(summary: dict) -> tuple:
    """What must not depend on how the rootfs was packed: everything but the layer digests."""
    strip = [{k: v for k, v in x.items() if k != "layer"} for x in summary["packages"] + summary["libraries"]]
    return summary["os"], strip


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every document of the demo OCI layout, plus the CycloneDX JSON of its SIF."""
    out = tmp_path_factory.mktemp("demo-sbom")
    jobs = {name: (OCI, out / name, *cli_args(name)) for name in DOCUMENTS}
    jobs["sif.json"] = (SIF, out / "sif.json")
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # each job is its own process
        return dict(zip(jobs, pool.map(lambda job: sbom_file(*job), jobs.values()), strict=True))


@pytest.fixture(scope="module")
def listed() -> dict:
    return json_of("packages", OCI, "--json")


@pytest.fixture(scope="module")
def cuda() -> dict:
    return json_of("cuda", OCI, "--json")


@pytest.fixture(scope="module")
def bom(demo: dict[str, Path]) -> dict:
    return json.loads(demo["cdx16.json"].read_text())


@pytest.fixture(scope="module")
def by_ref(bom: dict) -> dict[str, tuple[dict, dict | None]]:
    return {c["bom-ref"]: (c, parent) for c, parent in walk(bom["components"])}


@pytest.fixture(scope="module")
def by_path(by_ref: dict) -> dict[str, tuple[dict, dict | None]]:
    return {props(c, "path")[0]: (c, parent) for c, parent in by_ref.values() if props(c, "path")}


# ---- validity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*DOCUMENTS, "sif.json"])
def test_demo_documents_are_valid(demo: dict[str, Path], name: str) -> None:
    assert_valid(demo[name], *DOCUMENTS.get(name, ("cyclonedx-json", "1.6")))


def test_spdx_says_what_cyclonedx_says(demo: dict[str, Path], by_ref: dict) -> None:
    spdx = json.loads(demo["doc.spdx.json"].read_text())
    purls = {r["referenceLocator"] for p in spdx["packages"] for r in p.get("externalRefs", [])}
    assert purls == {c["purl"] for c, _ in by_ref.values() if "purl" in c} | {
        f"pkg:oci/oci@{DEMO_DIGEST}?arch=amd64&tag=demo"
    }
    assert len(spdx["packages"]) == len(by_ref) + 1  # the image is a package too
    kinds = {r["relationshipType"] for r in spdx["relationships"]}
    assert kinds == {"DESCRIBES", "CONTAINS", "DEPENDS_ON"}
    assert spdx["creationInfo"]["created"] == "1970-01-01T00:00:00Z"


# ---- what the demo's SBOM says --------------------------------------------------------------------------


def test_image_is_the_metadata_component(bom: dict) -> None:
    image = bom["metadata"]["component"]
    assert (image["type"], image["name"], image["version"]) == ("container", "oci", DEMO_DIGEST)
    assert image["purl"] == f"pkg:oci/oci@{DEMO_DIGEST}?arch=amd64&tag=demo"
    assert image["hashes"] == [{"alg": "SHA-256", "content": DEMO_DIGEST.removeprefix("sha256:")}]
    assert props(image, "tag") == ["demo"] and props(image, "platform") == ["linux/amd64"]
    assert props(image, "label:org.opencontainers.image.title") == ["imgscan-demo"]
    assert bom["metadata"]["tools"]["components"][0]["name"] == "imgscan"
    assert "timestamp" not in bom["metadata"]


def test_packages_are_those_imgscan_packages_lists(bom: dict, by_ref: dict, listed: dict) -> None:
    expected = {p["purl"]: p for p in listed["packages"]}
    found = {c["purl"]: c for c, _ in by_ref.values() if "purl" in c}
    assert set(found) == set(expected)
    for purl, c in found.items():
        p = expected[purl]
        assert (c["name"], c["version"], c["bom-ref"]) == (p["name"], p["version"], purl)
        assert props(c, "ecosystem") == [p["ecosystem"]] and props(c, "location") == [p["location"]]
        assert props(c, "layer")[0].startswith("sha256:")
        assert bool(c.get("licenses")) == bool(p["licenses"]), purl
    torch = found["pkg:pypi/torch@2.14.1"]
    assert torch["licenses"] == [{"expression": listed["packages"][-1]["licenses"][0]}]
    os_component = next(c for c, _ in by_ref.values() if c["type"] == "operating-system")
    assert (os_component["name"], os_component["version"]) == ("debian", "12")
    assert os_component["description"] == listed["os"]["pretty_name"]


def test_every_elf_object_is_a_component_with_its_sha256(by_path: dict) -> None:
    merged = scan_image(open_image(OCI), Limits())
    paths = elf_objects(merged.fs)
    assert sorted(by_path) == paths and len(paths) == 53
    for path in paths:
        component, _ = by_path[path]
        entry = merged.fs.lookup(path.lstrip("/"))
        assert component["hashes"] == [{"alg": "SHA-256", "content": entry.sha256}]
        assert component["name"] == (entry.elf.soname or path.rsplit("/", 1)[1])
        assert component["bom-ref"] == "file:" + path
    assert by_path["/usr/bin/python3.11"][0]["type"] == "application"
    assert by_path[f"{LIBDIR}/libc.so.6"][0]["type"] == "library"


def test_owned_libraries_are_nested_in_their_package(by_path: dict, bom: dict) -> None:
    top = {c["bom-ref"] for c in bom["components"]}
    cudart, owner = by_path[f"{SITE}/nvidia/cu13/lib/libcudart.so.13"]
    assert owner["purl"] == "pkg:pypi/nvidia-cuda-runtime@13.0.96" and cudart["bom-ref"] not in top
    assert by_path[f"{LIBDIR}/libc.so.6"][1]["name"] == "libc6"
    cudnn, owner = by_path["/usr/local/cuda-13.0/lib64/libcudnn.so.9.13.0"]  # copied in by hand: unowned
    assert owner is None and cudnn["bom-ref"] in top and cudnn["hashes"][0]["alg"] == "SHA-256"


def test_cuda_facts_and_findings_are_those_of_the_cuda_report(by_path: dict, bom: dict, cuda: dict) -> None:
    for lib in cuda["libraries"]:
        component, owner = by_path[lib["realpath"]]
        assert lib["name"] in props(component, "cuda-family")
        assert component["version"] == lib["version"] == props(component, "version")[0]
        assert len(props(component, "version-evidence")) == len(lib["evidence"])
        assert lib["rule"] in props(component, "cuda-rule")[0]
        assert props(component, "cuda-shadows") == lib["shadowed"]
        assert (owner or {}).get("purl") == lib["owner"]
    findings = [f"{f['severity']} {f['id']}: {f['message']}" for f in cuda["findings"]]
    assert props(bom["metadata"], "finding") == sorted(findings)
    assert any(f.startswith("error cuda.pin-mismatch: libcudnn.so.9: loaded 9.13.0") for f in findings)
    assert props(bom["metadata"], "torch")[0].startswith(f"2.14.1+cu130 (CUDA 13.0) at {SITE}/torch")


def test_dependencies(bom: dict, by_ref: dict, by_path: dict) -> None:
    deps = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    assert set(deps) == set(by_ref) | {bom["metadata"]["component"]["bom-ref"]}
    image = deps[bom["metadata"]["component"]["bom-ref"]]
    assert image == sorted(
        ["os:debian@12", *(c["bom-ref"] for c in bom["components"] if c["type"] != "operating-system")]
    )
    purl = {c["name"]: ref for ref, (c, _) in by_ref.items() if "purl" in c}
    assert deps[purl["libc6"]] == [purl["libgcc-s1"]]
    assert set(deps[purl["nvidia-cusolver"]]) == {
        purl[n] for n in ("nvidia-cublas", "nvidia-nvjitlink", "nvidia-cusparse")
    }
    c_ext = f"file:{SITE}/torch/_C.cpython-311-x86_64-linux-gnu.so"
    assert deps[c_ext] == [f"file:{LIBDIR}/libc.so.6", f"file:{SITE}/torch/lib/libtorch_python.so"]
    for path, (component, _) in by_path.items():  # every linker edge is one a property explains
        needed = props(component, "needed")
        for target in deps["file:" + path]:
            assert any(f"=> {target.removeprefix('file:')} [" in n for n in needed), (path, target)
    nvrtc = by_path[f"{SITE}/torch/lib/libcaffe2_nvrtc.so"][0]
    assert "libcuda.so.1 => provided by the host driver [host-provided]" in props(nvrtc, "needed")


def test_sif_and_oci_of_the_demo_give_the_same_components(demo: dict[str, Path]) -> None:
    oci, sif = read_cyclonedx_json(str(demo["cdx16.json"])), read_cyclonedx_json(str(demo["sif.json"]))
    assert component_set(oci) == component_set(sif)
    assert sif["image"]["purl"] is None and sif["image"]["name"] == "demo"  # no registry identity
    assert oci["findings"] == sif["findings"]


# ---- determinism, writes, errors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cdx16.json", "cdx15.xml", "doc.spdx.json"])
def test_same_image_same_bytes(demo: dict[str, Path], tmp_path: Path, name: str) -> None:
    again = sbom_file(OCI, tmp_path / name, *cli_args(name))
    assert again.read_bytes() == demo[name].read_bytes()


def test_timestamp_only_when_asked(bom: dict, tmp_path: Path) -> None:
    stamped = json.loads(sbom_file(OCI, tmp_path / "t.json", "--timestamp").read_text())
    assert stamped["metadata"]["timestamp"].endswith(("Z", "+00:00"))
    assert stamped["serialNumber"] == bom["serialNumber"]  # the same facts: the same document identity
    spdx = json.loads(
        sbom_file(OCI, tmp_path / "t.spdx.json", "--format", "spdx-json", "--timestamp").read_text()
    )
    assert spdx["creationInfo"]["created"] != "1970-01-01T00:00:00Z"


def test_scan_output_writes_the_sbom(bom: dict, demo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "scan.cdx.json"
    proc = imgscan("scan", OCI, "-o", out, "--fail-on", "error")
    assert proc.returncode == 1  # the pin mismatch, and the SBOM is written all the same
    assert "cuda.pin-mismatch" in proc.stdout and "cudnn" in proc.stdout
    assert out.read_bytes() == demo["cdx16.json"].read_bytes()


def test_output_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "sbom.json"
    out.write_text("old")
    os.chmod(out, 0o600)
    sbom_file(OCI, out)
    assert json.loads(out.read_text())["bomFormat"] == "CycloneDX"
    assert os.listdir(tmp_path) == ["sbom.json"]  # no temp file left beside it
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sbom", OCI, "-o", "/nonexistent-dir/x.json"], "/nonexistent-dir/x.json: cannot write"),
        (["sbom", "/nonexistent-image"], "/nonexistent-image"),
        (
            ["sbom", OCI, "--format", "spdx-json", "--spec-version", "1.5"],
            "--spec-version applies to CycloneDX",
        ),
        (["scan", OCI, "-o", "/nonexistent-dir/x.json"], "cannot write"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = imgscan(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert len([line for line in proc.stderr.splitlines() if "error" in line.lower()]) == 1


def test_stdout_without_output(demo: dict[str, Path]) -> None:
    proc = imgscan("sbom", OCI)
    assert proc.returncode == 0 and proc.stdout == demo["cdx16.json"].read_text()


# ---- identity and license edge cases (no image needed) ---------------------------------------------------


def _image(transport: str, tags: list[str], digest: str | None = "sha256:" + "ab" * 32) -> Image:
    location = {
        "dir": "/x/rootfs",
        "singularity": "/x/My.sif",
        "registry": "127.0.0.1:5000/imgscan/demo",
        "docker": "imgscan/demo:v1",
    }.get(transport, "/x/layout")
    return Image(
        reference=f"{transport}:{location}" + (f"@{digest}" if digest and transport != "singularity" else ""),
        transport=transport,
        digest=digest,
        platform="linux/amd64",
        config={},
        layers=[],
        tags=tags,
    )


@pytest.mark.parametrize(
    ("transport", "tags", "name", "purl"),
    [
        ("oci-dir", ["v4"], "layout", "pkg:oci/layout@sha256:{d}?arch=amd64&tag=v4"),
        (
            "oci-archive",
            ["registry.example.com:5000/ML/Trainer:1.0"],
            "registry.example.com:5000/ML/Trainer",
            "pkg:oci/trainer@sha256:{d}?arch=amd64&repository_url=registry.example.com:5000/ML/Trainer&tag=1.0",
        ),
        (
            "docker-archive",
            [DOCKER_REPO_TAG],
            "imgscan-test/image",
            "pkg:docker/imgscan-test/image@sha256:{d}?tag=v4",
        ),
        (
            "docker-archive",
            ["ghcr.io/org/app:2"],
            "ghcr.io/org/app",
            "pkg:docker/org/app@sha256:{d}?repository_url=ghcr.io&tag=2",
        ),
        (
            "registry",
            ["v1"],
            "127.0.0.1:5000/imgscan/demo",
            "pkg:oci/demo@sha256:{d}?arch=amd64&repository_url=127.0.0.1:5000/imgscan/demo&tag=v1",
        ),
        (
            "registry",
            [],
            "127.0.0.1:5000/imgscan/demo",
            "pkg:oci/demo@sha256:{d}?arch=amd64&repository_url=127.0.0.1:5000/imgscan/demo",
        ),
        ("docker", ["imgscan/demo:v1"], "imgscan/demo", "pkg:docker/imgscan/demo@sha256:{d}?tag=v1"),
        ("singularity", [], "My", None),  # the purl name is lowercase; the component keeps the file's
        ("dir", [], "rootfs", None),
    ],
)
def test_image_identity(transport: str, tags: list[str], name: str, purl: str | None) -> None:
    info = image_info(_image(transport, tags, None if transport == "dir" else "sha256:" + "ab" * 32))
    assert info.name == name
    assert info.purl == (purl.format(d="ab" * 32) if purl else None)
    assert info.ref == (info.purl or f"image:{name}")


def _wheel(name: str, site: str, *depends: str) -> Package:
    purl = f"pkg:pypi/{name.lower()}@1"
    location = f"{site}/{name}-1.dist-info/METADATA"
    return Package(name, "1", "python", purl, location, depends=list(depends), properties={"site": site})


def test_package_refs_and_depends_across_site_dirs() -> None:
    """A wheel in two site dirs gets two refs; a dependent's own site wins; names compare as PEP 503."""
    packages = [
        _wheel("PyYAML", "/a"),
        _wheel("PyYAML", "/b"),
        _wheel("app", "/b", "pyyaml"),
        _wheel("x", "/c", "pyyaml"),
    ]
    refs = package_refs(packages)
    assert refs[:2] == [
        "pkg:pypi/pyyaml@1#/a/PyYAML-1.dist-info/METADATA",
        "pkg:pypi/pyyaml@1#/b/PyYAML-1.dist-info/METADATA",
    ]
    depends = package_depends(packages, refs)
    assert depends[refs[2]] == [refs[1]]  # app in /b needs the /b copy
    assert depends[refs[3]] == sorted(refs[:2])  # x in /c has none of its own: either copy may serve it


def _synthetic(licenses: list[list[str]]) -> Sbom:
    """Packages with awkward license lists, and an owned library."""
    items = [
        Item(ref=f"pkg:deb/debian/p{i}@1", kind=PACKAGE, name=f"p{i}", version="1",
             purl=f"pkg:deb/debian/p{i}@1", licenses=texts)
        for i, texts in enumerate(licenses)
    ]  # fmt: skip
    items.append(Item(ref="file:/usr/lib/libx.so.1", kind=LIBRARY, name="libx.so.1", sha256="0" * 64,
                      parent=items[0].ref, properties=[("imgscan:path", "/usr/lib/libx.so.1")]))  # fmt: skip
    image = ImageInfo(ref="image:x", name="x", digest=None, purl=None)
    depends = {image.ref: sorted(i.ref for i in items if i.parent is None), items[1].ref: [items[0].ref]}
    return Sbom("0", image, sorted(items, key=lambda i: i.ref), depends, [("imgscan:finding", "info x: y")])


LICENSE_CASES = [
    ["MIT"],
    ["Apache-2.0 AND MIT"],
    ["GPL-2+", "LGPL-2.1+", "MIT"],  # one a Debian name, two SPDX: named licenses, not an expression
    ["LGPL-2.1+", "Apache-2.0 WITH LLVM-exception"],  # all SPDX: one ANDed expression
    ["LicenseRef-NVIDIA-Proprietary"],
    ["NVIDIA Proprietary Software", "GPL-2", "GPL 2"],  # two that read alike once made SPDX-safe
    [],
]


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_awkward_licenses_stay_valid(tmp_path: Path, name: str) -> None:
    fmt, version = DOCUMENTS[name]
    path = tmp_path / name
    path.write_text(render(_synthetic(LICENSE_CASES), fmt, version or "1.6"))
    assert_valid(path, fmt, version)


# ---- the decoder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cdx16.json", "cdx15.json"])
def test_read_back_our_own(demo: dict[str, Path], name: str, listed: dict, cuda: dict) -> None:
    summary = read_cyclonedx_json(str(demo[name]))
    assert [(p["purl"], p["version"], p["ecosystem"], p["location"]) for p in summary["packages"]] == sorted(
        (p["purl"], p["version"], p["ecosystem"], p["location"]) for p in listed["packages"]
    )
    libraries = {lib["path"]: lib for lib in summary["libraries"]}
    for lib in cuda["libraries"]:
        assert (libraries[lib["realpath"]]["version"], libraries[lib["realpath"]]["cuda_family"]) == (
            lib["version"],
            lib["name"],
        )
    assert sorted(libraries) == [lib["path"] for lib in summary["libraries"]] and len(libraries) == 53
    assert summary["findings"] == sorted(
        f"{f['severity']} {f['id']}: {f['message']}" for f in cuda["findings"]
    )
    assert summary["image"]["purl"].startswith("pkg:oci/oci@sha256:")
    assert summary["tools"] == ["imgscan 0.1.0"] and summary["os"] == {"name": "debian", "version": "12"}
    cudart = libraries[f"{SITE}/nvidia/cu13/lib/libcudart.so.13"]
    assert cudart["owner"] == "pkg:pypi/nvidia-cuda-runtime@13.0.96"
    assert f"{LIBDIR}/libc.so.6" in cudart["links"]


@pytest.mark.skipif(shutil.which("syft") is None, reason="needs syft")
def test_read_syft_cyclonedx(demo: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "syft.json").write_text(run_syft(f"oci-dir:{OCI}", "cyclonedx-json"))
    theirs = read_cyclonedx_json(str(tmp_path / "syft.json"))
    ours = read_cyclonedx_json(str(demo["cdx16.json"]))
    assert theirs["tools"][0].startswith("syft ") and theirs["libraries"] == [] and theirs["findings"] == []
    assert [(p["purl"], p["version"], p["ecosystem"]) for p in theirs["packages"]] == [
        (p["purl"], p["version"], p["ecosystem"]) for p in ours["packages"]
    ]
    assert theirs["os"] == ours["os"] and theirs["image"]["version"] == DEMO_DIGEST


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"spdxVersion": "SPDX-2.3"}', "not a CycloneDX JSON document"),
        ('{"bomFormat": "CycloneDX", "specVersion": "1.3"}', "CycloneDX 1.3 is not supported"),
    ],
)
def test_read_refuses_what_it_cannot_read(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ImgscanError, match=message):
        read_cyclonedx_json(str(path))


# ---- real images: every form of one rootfs -----------------------------------------------------------------


def _sif_of(rootfs: Path, work: Path) -> Path:
    if shutil.which("mksquashfs") is None or shutil.which("siftool") is None:
        pytest.skip("needs mksquashfs and siftool")
    sqfs, sif = work / "rootfs.sqfs", work / "rootfs.sif"
    for cmd in (
        ["mksquashfs", rootfs, sqfs, "-noappend", "-quiet", "-no-progress"],
        ["siftool", "new", sif],
        ["siftool", "add", sif, sqfs, "--datatype", "4", "--parttype", "2", "--partfs", "1",
         "--partarch", "2", "--groupid", "1"],
    ):  # fmt: skip
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return sif


@pytest.mark.parametrize("image_set", IMAGE_SETS, indirect=True)
def test_every_form_of_a_rootfs_gives_the_same_components(image_set: ImageSet, tmp_path: Path) -> None:
    forms = {
        "oci-dir": f"oci-dir:{image_set.umoci.path}:{FINAL_TAG}",
        "oci-archive": f"oci-archive:{image_set.oci_archive}",
        "docker-archive": f"docker-archive:{image_set.docker_archive}",
        "dir": f"dir:{image_set.rootfs_dir}",
        "sif": f"sif:{_sif_of(image_set.rootfs_dir, tmp_path)}",
    }
    summaries = {
        form: read_cyclonedx_json(str(sbom_file(ref, tmp_path / f"{form}.json")))
        for form, ref in forms.items()
    }
    expected = component_set(summaries["oci-dir"])
    assert expected[1], "the image has ELF objects"
    for form, summary in summaries.items():
        assert component_set(summary) == expected, form
    manifest = image_set.umoci.manifest_digest(FINAL_TAG)
    assert summaries["oci-dir"]["image"]["purl"] == f"pkg:oci/layout@{manifest}?arch=amd64&tag={FINAL_TAG}"
    assert summaries["docker-archive"]["image"]["purl"].startswith("pkg:docker/imgscan-test/image@sha256:")
    listed = json_of("packages", forms["oci-dir"], "--json")["packages"]
    assert sorted(p["purl"] for p in summaries["oci-dir"]["packages"]) == sorted(p["purl"] for p in listed)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_debootstrap_image_documents_are_valid(deb_images: ImageSet, tmp_path: Path, name: str) -> None:
    path = sbom_file(f"oci-dir:{deb_images.umoci.path}:{FINAL_TAG}", tmp_path / name, *cli_args(name))
    assert_valid(path, *DOCUMENTS[name])
    if name == "cdx16.json":
        summary = read_cyclonedx_json(str(path))
        assert len(summary["packages"]) > 50 and len(summary["libraries"]) > 100
        assert sum(1 for lib in summary["libraries"] if lib["owner"]) > 100
