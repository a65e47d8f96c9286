"""Command line: parse, call the library, render. No analysis logic lives here."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from imgscan import __version__
from imgscan.catalog.catalog import catalog_image
from imgscan.catalog.model import OsRelease, Package
from imgscan.catalog.report import packages_data, packages_lines
from imgscan.cuda.report import (
    TABLE_HEADER,
    CudaReport,
    cuda_report,
    markdown,
    report_data,
    table_rows,
    worst_severity,
)
from imgscan.cuda.stack import SEVERITIES
from imgscan.diff.compare import FAIL_ON, diff_summaries, fails
from imgscan.diff.files import diff_files
from imgscan.diff.render import markdown as diff_markdown
from imgscan.diff.render import print_table
from imgscan.diff.sides import image_side, is_sbom_file, sbom_side, shared_layers
from imgscan.errors import ImgscanError
from imgscan.layers.cache import LayerCache
from imgscan.layers.index import Limits
from imgscan.layers.scan import MergedImage, scan_image
from imgscan.linker.context import DEFAULT_HWCAPS, Cpu, RunSettings
from imgscan.linker.report import Closures, elf_objects, ldd_data, ldd_lines
from imgscan.sbom.build import build_sbom
from imgscan.sbom.output import DEFAULT_SPEC_VERSION, FORMATS, SPEC_VERSIONS, render, write_atomic
from imgscan.sources.image import Image
from imgscan.sources.refs import DEFAULT_PLATFORM, SourceOptions, open_image
from imgscan.views import entry_data, entry_line, inspect_data, inspect_lines, list_entries, scan_data


def _image_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that reads an image shares."""
    defaults = Limits()
    f = click.option(
        "--platform",
        default=DEFAULT_PLATFORM,
        show_default=True,
        help="Image to pick from a multi-platform index (os/arch[/variant]).",
    )(f)
    f = click.option(
        "--insecure",
        is_flag=True,
        envvar="IMGSCAN_INSECURE_REGISTRY",
        help="registry: sources over plain http, for loopback and test registries (env "
        "IMGSCAN_INSECURE_REGISTRY=1).",
    )(f)
    f = click.option(
        "--max-entries",
        type=int,
        default=defaults.max_entries,
        show_default=True,
        help="Refuse a layer with more entries than this.",
    )(f)
    f = click.option(
        "--max-layer-bytes",
        type=int,
        default=defaults.max_layer_bytes,
        show_default=True,
        help="Refuse a layer whose uncompressed tar is larger.",
    )(f)
    f = click.option(
        "--layer-cache",
        metavar="DIR",
        envvar="IMGSCAN_LAYER_CACHE",
        type=click.Path(file_okay=False),
        default=None,
        help="Keep layer indexes in DIR, by diff_id, and reuse them (env IMGSCAN_LAYER_CACHE; off: "
        "nothing is stored).",
    )(f)
    f = click.option(
        "--max-ratio",
        type=int,
        default=defaults.max_inflate_ratio,
        show_default=True,
        help="Refuse a layer inflating more than RATIO:1 (past 1 GiB).",
    )(f)
    return f


def _limits(opts: dict[str, Any]) -> Limits:
    return Limits(
        max_entries=opts["max_entries"],
        max_layer_bytes=opts["max_layer_bytes"],
        max_inflate_ratio=opts["max_ratio"],
    )


def _layer_cache(opts: dict[str, Any], shared: frozenset[str] = frozenset()) -> LayerCache | None:
    if not opts["layer_cache"] and not shared:
        return None
    return LayerCache(opts["layer_cache"] or None, shared)


def _open(ref: str, opts: dict[str, Any]) -> Image:
    return open_image(ref, SourceOptions(opts["platform"], opts["insecure"], _limits(opts)))


def _scan(ref: str, opts: dict[str, Any]) -> MergedImage:
    return scan_image(_open(ref, opts), _limits(opts), _layer_cache(opts))


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"imgscan: warning: {line}", err=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgscan")
def cli() -> None:
    """Analyse container images: filesystem, linkage, packages, CUDA stack."""


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_image_options
def inspect(ref: str, as_json: bool, **opts: Any) -> None:
    """Show what REF resolves to: digest, platform, layers, config and history (layers are not read)."""
    data = inspect_data(_open(ref, opts))
    if as_json:
        _emit_json(data)
    else:
        click.echo("\n".join(inspect_lines(data)))


@cli.command(name="ls")
@click.argument("ref")
@click.argument("path", default="/")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories recursively.")
@_image_options
def ls_command(ref: str, path: str, as_json: bool, recursive: bool, **opts: Any) -> None:
    """List PATH in the merged image like `ls -l`, each entry with the layer it came from."""
    merged: MergedImage = _scan(ref, opts)
    _warn(merged.warnings)
    entries = list_entries(merged.fs, path, recursive)
    if as_json:
        _emit_json(
            {
                "reference": merged.image.reference,
                "digest": merged.image.digest,
                "entries": [entry_data(p, e) for p, e in entries],
            }
        )
    else:
        for p, e in entries:
            click.echo(entry_line(p, e))


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How the container would run: Env overrides and the CPU ld.so would see (the image can't say)."""
    f = click.option(
        "--env",
        "env_overrides",
        multiple=True,
        metavar="KEY=VAL",
        help="Override the image config's Env (e.g. LD_LIBRARY_PATH=...); repeatable.",
    )(f)
    f = click.option(
        "--hwcaps",
        type=click.Choice(["v2", "v3", "v4"]),
        default=DEFAULT_HWCAPS,
        show_default=True,
        help="x86-64 level assumed for glibc-hwcaps subdirectories.",
    )(f)
    f = click.option(
        "--cpu-platform",
        type=click.Choice(["haswell", "xeon_phi", "x86_64"]),
        default=None,
        help="glibc's platform name ($PLATFORM, legacy hwcap dirs): haswell on Intel v3+ "
        "(default at v3/v4), x86_64 on AMD.",
    )(f)
    return f


def _settings(merged: MergedImage, opts: dict[str, Any]) -> RunSettings:
    for item in opts["env_overrides"]:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VAL", param_hint="--env")
    config = merged.image.container_config
    return RunSettings(
        env=[*(config.get("Env") or []), *opts["env_overrides"]],
        cpu=Cpu(opts["hwcaps"], opts["cpu_platform"]),
        working_dir=config.get("WorkingDir") or "/",
        user=config.get("User") or "",
    )


@cli.command()
@click.argument("ref")
@click.argument("paths", nargs=-1)
@click.option("--all", "all_objects", is_flag=True, help="Every dynamically linked ELF file in the image.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_run_options
@_image_options
def ldd(ref: str, paths: tuple[str, ...], all_objects: bool, as_json: bool, **opts: Any) -> None:
    """Resolve shared-object dependencies of PATHS (or --all) inside REF, as glibc's ld.so would."""
    if not paths and not all_objects:
        raise click.UsageError("give one or more PATHs in the image, or --all")
    merged = _scan(ref, opts)
    _warn(merged.warnings)
    roots = elf_objects(merged.fs) if all_objects else list(paths)
    closures = Closures(merged.fs, _settings(merged, opts))
    if as_json:
        data = ldd_data(closures, roots)
        _warn(closures.warnings)
        _emit_json({"reference": merged.image.reference, "digest": merged.image.digest, **data})
    else:
        lines = ldd_lines(closures, roots)
        _warn(closures.warnings)
        click.echo("\n".join(lines))


def _fail_on_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--fail-on",
        type=click.Choice(list(SEVERITIES)),
        default=None,
        help="Exit 1 when a finding reaches this severity (errors still exit 2).",
    )(f)


def _console() -> Console:
    """Rich output; in a pipe or CI log, wide enough that paths are not cut."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _render_cuda(report: CudaReport, console: Console) -> None:
    if not report.torch:
        console.print("No torch install found in the image.")
    for t in report.torch:
        how = (
            f"as loaded by {t['interpreter']}" if t["interpreter"] else "each library alone (no interpreter)"
        )
        console.print(f"torch {t['version']} (CUDA {t['cuda']}) at {t['path']}, resolved {how}")
    if report.libraries:
        table = Table(*TABLE_HEADER, box=box.SIMPLE_HEAD, show_edge=False)
        for row in table_rows(report):
            table.add_row(*row)
        console.print(table)
    for f in report.findings:
        colour = {"error": "red", "warning": "yellow", "info": "cyan"}[f.severity]
        console.print(
            f"[{colour}]{f.severity:<7}[/{colour}] {f.id}: {f.message}", highlight=False, markup=True
        )


def _exit_for(report: CudaReport, fail_on: str | None) -> None:
    worst = worst_severity(report)
    if fail_on and worst and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on):
        sys.exit(1)


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--markdown", "as_markdown", is_flag=True, help="A markdown report (PR comments, release notes)."
)
@_run_options
@_fail_on_option
@_image_options
def cuda(ref: str, as_json: bool, as_markdown: bool, fail_on: str | None, **opts: Any) -> None:
    """Which cuDNN, cuBLAS, NCCL and cudart torch loads in REF: versions, evidence and findings."""
    merged = _scan(ref, opts)
    _warn(merged.warnings)
    _, packages, catalog_warnings = catalog_image(merged.fs)
    _warn(catalog_warnings)
    report = cuda_report(merged.fs, packages, _settings(merged, opts))
    if as_json:
        _emit_json(
            {"reference": merged.image.reference, "digest": merged.image.digest, **report_data(report)}
        )
    elif as_markdown:
        click.echo(markdown(report))
    else:
        _render_cuda(report, _console())
    _exit_for(report, fail_on)


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_image_options
def packages(ref: str, as_json: bool, **opts: Any) -> None:
    """Installed packages (deb, apk, rpm, python, conda) with the files they own, and the OS."""
    merged = _scan(ref, opts)
    os_release, found, catalog_warnings = catalog_image(merged.fs)
    _warn(merged.warnings + catalog_warnings)
    data = packages_data(os_release, found)
    if as_json:
        _emit_json({"reference": merged.image.reference, "digest": merged.image.digest, **data})
    else:
        click.echo("\n".join(packages_lines(data)))


def _write_sbom(
    merged: MergedImage,
    os_release: OsRelease | None,
    packages: list[Package],
    report: CudaReport,
    opts: dict[str, Any],
    fmt: str = "cyclonedx-json",
    spec_version: str = DEFAULT_SPEC_VERSION,
    timestamp: bool = False,
) -> None:
    """Build the SBOM of an analysed image and write it to opts['output'] (atomically) or stdout."""
    closures = Closures(merged.fs, _settings(merged, opts))
    document = build_sbom(merged, os_release, packages, report, closures)
    _warn(closures.warnings)
    text = render(document, fmt, spec_version, timestamp)
    if opts["output"] is None:
        click.echo(text, nl=False)
    else:
        write_atomic(opts["output"], text)


def _output_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False), help=help_text)


@cli.command()
@click.argument("ref")
@_output_option("Write the SBOM to FILE instead of stdout (atomically).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="cyclonedx-json",
    show_default=True,
    help="SBOM format.",
)
@click.option(
    "--spec-version",
    type=click.Choice(SPEC_VERSIONS),
    default=None,
    help=f"CycloneDX specification version [default: {DEFAULT_SPEC_VERSION}]; SPDX output is always 2.3.",
)
@click.option(
    "--timestamp", is_flag=True, help="Record the creation time (the output then differs run to run)."
)
@_run_options
@_image_options
def sbom(ref: str, fmt: str, spec_version: str | None, timestamp: bool, **opts: Any) -> None:
    """An SBOM of REF: the image, its OS, packages, every ELF object with its links, and the CUDA stack."""
    if spec_version and fmt == "spdx-json":
        raise click.UsageError("--spec-version applies to CycloneDX; spdx-json is SPDX 2.3")
    merged = _scan(ref, opts)
    _warn(merged.warnings)
    os_release, packages, catalog_warnings = catalog_image(merged.fs)
    _warn(catalog_warnings)
    report = cuda_report(merged.fs, packages, _settings(merged, opts))
    _write_sbom(
        merged, os_release, packages, report, opts, fmt, spec_version or DEFAULT_SPEC_VERSION, timestamp
    )


@cli.command()
@click.argument("ref")
@_output_option("Also write the CycloneDX JSON SBOM (the same facts as the table) to FILE.")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (source, image, packages, cuda)."
)
@_fail_on_option
@_run_options
@_image_options
def scan(ref: str, as_json: bool, fail_on: str | None, **opts: Any) -> None:
    """The everyday check: what REF is, what it holds, and what torch really loads in it."""
    merged = _scan(ref, opts)
    _warn(merged.warnings)
    os_release, packages, catalog_warnings = catalog_image(merged.fs)
    _warn(catalog_warnings)
    report = cuda_report(merged.fs, packages, _settings(merged, opts))
    if opts["output"] is not None:
        _write_sbom(merged, os_release, packages, report, opts)
    if as_json:
        warnings = merged.warnings + catalog_warnings
        _emit_json(
            scan_data(merged.image, packages_data(os_release, packages), report_data(report), warnings)
        )
        _exit_for(report, fail_on)
        return
    console = _console()
    image = merged.image
    console.print(f"{image.reference}")
    console.print(
        f"  platform {image.platform}, {len(image.layers)} layer(s), "
        f"OS {os_release.pretty_name if os_release and os_release.pretty_name else 'unknown'}"
    )
    counts = Counter(p.ecosystem for p in packages)
    console.print("  packages: " + (", ".join(f"{n} {eco}" for eco, n in sorted(counts.items())) or "none"))
    console.print()
    _render_cuda(report, console)
    _exit_for(report, fail_on)


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema: docs/diff.md).")
@click.option("--markdown", "as_markdown", is_flag=True, help="A markdown report (PR comments).")
@click.option("--files", "with_files", is_flag=True, help="Also compare every path (both sides images).")
@click.option(
    "--fail-on",
    type=click.Choice(FAIL_ON),
    default=None,
    help="Exit 1 when a CUDA library or torch changed, a package was downgraded, a finding is new, or "
    "anything changed.",
)
@_run_options
@_image_options
def diff(
    a: str, b: str, as_json: bool, as_markdown: bool, with_files: bool, fail_on: str | None, **opts: Any
) -> None:
    """What changed from A to B that matters: image config, CUDA stack, linkage, findings, packages.

    A and B are each an image reference or a CycloneDX JSON SBOM file (imgscan's, or another tool's for a
    package-level diff)."""
    images = {arg: _open(arg, opts) for arg in (a, b) if not is_sbom_file(arg)}
    if with_files and len(images) < 2:
        raise click.UsageError("--files needs both sides to be images")
    cache = _layer_cache(opts, shared_layers(list(images.values())))
    sides = []
    for arg in (a, b):
        if arg not in images:
            sides.append(sbom_side(arg))
            continue
        merged = scan_image(images[arg], _limits(opts), cache)
        _warn(merged.warnings)
        side, warnings = image_side(merged, _settings(merged, opts))
        _warn(warnings)
        sides.append(side)
    result = {
        "a": sides[0].source,
        "b": sides[1].source,
        **diff_summaries(sides[0].summary, sides[1].summary),
    }
    if with_files:
        assert sides[0].merged is not None and sides[1].merged is not None
        result["files"] = diff_files(sides[0].merged.fs, sides[1].merged.fs)
    if as_json:
        _emit_json(result)
    elif as_markdown:
        click.echo(diff_markdown(result), nl=False)
    else:
        print_table(result, _console())
    if fail_on and fails(result, fail_on):
        sys.exit(1)


def main() -> None:
    """Entry point: user-caused failures become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    except ImgscanError as e:
        click.echo(f"imgscan: error: {e}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as e:  # a bug: still one line, with a way to see the traceback
        if os.environ.get("IMGSCAN_DEBUG"):
            raise
        click.echo(
            f"imgscan: internal error: {type(e).__name__}: {e} (IMGSCAN_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(2)
