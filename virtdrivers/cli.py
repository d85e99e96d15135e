"""The ``virtdrivers`` command.

``drivers`` lists installed plugins, ``parity`` runs the conformance suite
and writes the matrix, ``vm`` drives instances on a configured endpoint.
Errors are one line (``error: <kind>: <message>``) and exit status 2; add
``--debug`` for the traceback.

Endpoints for ``vm`` come from ``--driver`` plus ``--setting KEY=VALUE``, or
from a TOML file (``--config``, default ``$VIRTDRIVERS_CONFIG`` or
``~/.config/virtdrivers/endpoints.toml``)::

    [endpoints.lab]
    driver = "libvirt"
    uri = "qemu+tls://kvm1.lab/system"

Secrets can be given as ``password_env = "NAME"``: any ``X_env`` key is read
from that environment variable into setting ``X``, so files hold no secrets.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

    from virtdrivers.driver import Driver
    from virtdrivers.listing import DriverSummary

F = TypeVar("F", bound=Callable[..., Any])


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    from virtdrivers.errors import DriverError

    kind = exc.code if isinstance(exc, DriverError) else type(exc).__name__
    click.echo(f"error: {kind}: {exc}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns every error into one line, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            _fail(exc, bool(ctx.find_root().params.get("debug")))


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="virtdrivers")
def main(debug: bool) -> None:
    """Drive any hypervisor through one interface."""


# -- drivers ---------------------------------------------------------------------------------


@contextmanager
def _own_stdout() -> Iterator[TextIO]:
    """Yield the stream for this command's own output; every other write to stdout goes to stderr.

    Plugins run code at import (and may leave threads running that print later), so
    while ``drivers`` runs, file descriptor 1 is pointed at stderr and the command
    writes to a private duplicate of the real stdout. It stays so until the process
    exits: a plugin thread printing after the listing lands on stderr, not after or
    inside the JSON. Without a real descriptor 1 (click's CliRunner, a StringIO),
    ``sys.stdout`` itself is swapped for stderr for the command's duration.
    """
    original = sys.stdout
    original.flush()
    try:
        fd = original.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd != 1:
        with redirect_stdout(sys.stderr):
            yield original
        return
    own = os.fdopen(os.dup(1), "w", encoding=original.encoding, errors=original.errors)
    os.dup2(2, 1)
    try:
        yield own
    finally:
        own.close()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0.1),
    default=1.5,
    show_default=True,
    help="Seconds a plugin may take to load before it is reported as hanging.",
)
@click.option("--fresh", is_flag=True, help="Import every plugin instead of trusting the listing cache.")
def drivers(as_json: bool, time_limit: float, fresh: bool) -> None:
    """List installed drivers, their versions and declared capabilities.

    A plugin that fails to import, raises, hangs (``--time-limit``) or is
    refused is listed with the reason, and the exit status is 1. What a plugin
    declares is cached for as long as its code is unchanged (see
    ``virtdrivers.listing``); ``--fresh`` imports every plugin.
    """
    from virtdrivers.listing import describe_drivers

    with _own_stdout() as out:
        entries = describe_drivers(time_limit, fresh=fresh)
        if as_json:
            data = [
                {
                    "name": e.name,
                    "distribution": e.distribution,
                    "version": e.version,
                    "contract_version": e.contract_version,
                    "capabilities": list(e.capabilities),
                    "endpoints": list(e.endpoints),
                    "settings": list(e.settings),
                    "error": e.error,
                }
                for e in entries
            ]
            click.echo(json.dumps(data, indent=2), file=out)
        else:
            from rich.console import Console

            render_drivers(entries, Console(file=out))
    if any(not e.ok for e in entries):
        sys.exit(1)


#: Narrowest capabilities column the full ``drivers`` table is drawn with; narrower, and the compact form is used.
CAPS_MIN_WIDTH = 50


def render_drivers(entries: list[DriverSummary], console: Console) -> None:
    """Print the listing: one row per driver where it fits, a compact form where it does not.

    The full table names every capability in its row; on a narrow console that
    column would be a few characters wide and each row many lines tall. There the
    table shows a capability count, and the names follow as one wrapped
    paragraph per driver (errors likewise), so no line is wider than the console.
    """
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    def table(compact: bool, rows: list[DriverSummary]) -> Table:
        grid = Table(title="virtdrivers plugins", title_justify="left")
        for col in ("driver", "distribution", "contract", "embedded endpoints", "capabilities"):
            grid.add_column(col, overflow="fold", no_wrap=not compact and col != "capabilities")
        for e in rows:
            dist = f"{e.distribution or '?'} {e.version or ''}".rstrip()
            if not e.ok:
                problem = "[red]error (below)[/]" if compact else f"[red]{escape(e.error or '')}[/]"
                grid.add_row(e.name, dist, "-", "-", problem)
                continue
            endpoints = ", ".join(e.endpoints) or "-"
            caps = list(e.capabilities)
            shown = str(len(caps)) if compact else ", ".join(caps) or "-"
            grid.add_row(e.name, dist, e.contract_version or "-", endpoints, shown)
        return grid

    # The full table is kept when, after every other column has its natural width, the
    # capabilities column still gets CAPS_MIN_WIDTH: then a row takes two or three lines.
    unbounded = console.options.update_width(1_000_000)  # the width the table wants, not the one it gets
    others = Measurement.get(console, unbounded, table(True, [e for e in entries if e.ok])).maximum
    if others + CAPS_MIN_WIDTH <= console.width:
        console.print(table(False, entries))
        return
    console.print(table(True, entries))
    for e in entries:
        line = Text(f"{e.name}: ", style="bold")
        if e.ok:
            line.append(" ".join(e.capabilities) or "-")
        else:
            line.append(e.error or "", style="red")
        console.print(line, overflow="fold")


# -- parity ----------------------------------------------------------------------------------


def _parse_settings(pairs: tuple[str, ...], *, resolve: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (VALUE parsed as JSON when it can be) as settings.

    ``KEY_env=VAR`` reads KEY from environment variable VAR. With ``resolve=False``
    the reference is kept (after checking VAR is set), so a caller that hands the
    settings to another process never holds the secret in what it writes.
    """
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"want KEY=VALUE, got {pair!r}", param_hint="--setting")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    resolved = _resolve_env(settings)
    return resolved if resolve else settings


def _resolve_env(settings: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in settings.items():
        if key.endswith("_env") and isinstance(value, str):
            if value not in os.environ:
                raise click.UsageError(f"setting {key} names environment variable {value!r}, which is not set")
            out[key.removesuffix("_env")] = os.environ[value]
        else:
            out[key] = value
    return out


_LYING_OUTCOMES = ("fails", "declared_but_fails", "not_declared_but_works")


def _strict_violations(matrix: dict[str, Any]) -> list[str]:
    """Why ``--strict`` fails this matrix: every cell that fails or lies, every column that did not run."""
    problems = [f"{c['id']}: column error" for c in matrix["columns"] if c["error"]]
    problems += [
        f"{c['column']}: {c['feature']} {c['outcome']}" for c in matrix["cells"] if c["outcome"] in _LYING_OUTCOMES
    ]
    return problems


@main.command()
@click.option("--driver", "driver_names", multiple=True, help="Only this driver (repeatable). Default: all.")
@click.option("--endpoint", help="Only this embedded endpoint of the driver(s).")
@click.option(
    "--setting",
    "settings",
    multiple=True,
    help="KEY=VALUE: run on a real endpoint instead (KEY_env=VAR reads it from the environment). "
    "Secret values are handed to the suite through its environment and scrubbed from every file written.",
)
@click.option(
    "--evidence",
    type=click.Choice(["real", "vendor-simulator", "project-simulator", "in-memory"]),
    default="real",
    show_default=True,
    help="How real the endpoint given with --setting is (embedded endpoints state their own).",
)
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("build/parity"), show_default=True)
@click.option("--jobs", type=click.IntRange(1, 16), default=2, show_default=True, help="Columns run at once.")
@click.option(
    "--test-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds one test may take; it then fails (counts against its feature).",
)
@click.option(
    "--column-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    help="Seconds one driver@endpoint column may take; it is then stopped and becomes a column error.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on any cell that lies: exit 1 on any fails, declared_but_fails or not_declared_but_works "
    "cell and on any column that could not run.",
)
def parity(
    driver_names: tuple[str, ...],
    endpoint: str | None,
    settings: tuple[str, ...],
    evidence: str,
    output_dir: Path,
    jobs: int,
    test_timeout: float,
    column_timeout: float,
    strict: bool,
) -> None:
    """Run the conformance suite and write the feature-parity matrix (JSON, Markdown, HTML, text)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        from virtdrivers_conformance.matrix import render_terminal, write_all
        from virtdrivers_conformance.runner import Target, default_targets, run_parity
    except ImportError as exc:
        raise click.UsageError(f"parity needs the virtdrivers-conformance package ({exc})") from None

    console = Console(stderr=True)
    if settings:
        if len(driver_names) != 1:
            raise click.UsageError("--setting needs exactly one --driver")
        # References stay references: the runner must never hold a secret in the files it writes.
        given = _parse_settings(settings, resolve=False)
        targets = [Target(driver_names[0], endpoint or "configured", settings=given, evidence=evidence)]
    else:
        targets = default_targets(driver_names or None)
        if endpoint:
            targets = [t for t in targets if t.endpoint == endpoint]
    if not targets:
        raise click.UsageError("no driver to run")
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as bar:
        tasks = {t.id: bar.add_task(t.id, total=None, status="starting" if not t.error else "error") for t in targets}
        counts: dict[str, dict[str, int]] = {t.id: {} for t in targets}

        def on_event(target_id: str, event: dict[str, Any]) -> None:
            task = tasks[target_id]
            if "total" in event:
                bar.update(task, total=event["total"])
                return
            seen = counts[target_id]
            seen[event["outcome"]] = seen.get(event["outcome"], 0) + 1
            status = " ".join(f"{k} {v}" for k, v in sorted(seen.items()))
            bar.update(task, advance=1, status=status)

        started = time.monotonic()
        matrix = run_parity(
            targets,
            jobs=jobs,
            progress=on_event,
            workdir=output_dir / "logs",
            test_timeout=test_timeout,
            column_timeout=column_timeout,
        )
    paths = write_all(matrix, output_dir)
    render_terminal(matrix, Console())
    click.echo(f"parity matrix written in {time.monotonic() - started:.1f}s:", err=True)
    for fmt, path in paths.items():
        click.echo(f"  {fmt:<9} {path}", err=True)
    if strict and (problems := _strict_violations(matrix)):
        click.echo(f"--strict: {len(problems)} problem(s):\n  " + "\n  ".join(problems), err=True)
        sys.exit(1)


# -- vm --------------------------------------------------------------------------------------


def _endpoint_options(func: F) -> F:
    for option in reversed(
        [
            click.option("--driver", "driver_name", help="Driver entry-point name."),
            click.option("--setting", "settings", multiple=True, help="KEY=VALUE driver setting (repeatable)."),
            click.option("--config", type=click.Path(path_type=Path, dir_okay=False), help="Endpoints TOML file."),
            click.option("--endpoint", "endpoint_name", help="Endpoint name in the config file."),
            click.option("--embedded", is_flag=True, help="Start the driver's embedded endpoint for this command."),
            click.option(
                "--embedded-endpoint",
                "embedded_name",
                metavar="NAME",
                help="Start this embedded endpoint of the driver (implies --embedded; default: its first).",
            ),
        ]
    ):
        func = option(func)
    return func


def _config_endpoint(config: Path | None, name: str) -> tuple[str, dict[str, Any]]:
    path = config or Path(
        os.environ.get("VIRTDRIVERS_CONFIG", Path.home() / ".config" / "virtdrivers" / "endpoints.toml")
    )
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise click.UsageError(f"no config file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    section = data.get("endpoints", {}).get(name)
    if not isinstance(section, dict) or "driver" not in section:
        raise click.UsageError(f"{path} has no [endpoints.{name}] with a driver")
    settings = dict(section)
    return str(settings.pop("driver")), _resolve_env(settings)


@contextmanager
def _open_driver(
    driver_name: str | None,
    settings: tuple[str, ...],
    config: Path | None,
    endpoint_name: str | None,
    embedded: bool,
    embedded_name: str | None = None,
) -> Iterator[Driver]:
    from virtdrivers.loader import driver_class

    if endpoint_name:
        name, values = _config_endpoint(config, endpoint_name)
    elif driver_name:
        name, values = driver_name, _parse_settings(settings)
    else:
        raise click.UsageError("give --driver (with --setting) or --endpoint")
    cls = driver_class(name)
    if embedded or embedded_name:
        endpoints = {e.name: e for e in cls.embedded_endpoints()}
        if not endpoints:
            raise click.UsageError(f"{name} has no embedded endpoint")
        chosen = endpoints.get(embedded_name or next(iter(endpoints)))
        if chosen is None:
            raise click.UsageError(f"{name} has no embedded endpoint {embedded_name!r} (has: {', '.join(endpoints)})")
        with chosen.start() as started, cls(**{**started, **values}) as driver:
            driver.narrow_capabilities(chosen.unavailable)
            yield driver
        return
    with cls(**values) as driver:
        yield driver


@main.group()
def vm() -> None:
    """Manage instances on one endpoint."""


def _print_instances(infos: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("name", "id", "state", "vcpus", "memory MiB", "node", "disks"):
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.name, i.id, i.power_state.value, str(i.vcpus), str(i.memory_mb), i.node or "-", str(len(i.disks))
        )
    Console().print(table)


@vm.command("list")
@_endpoint_options
@click.option("--json", "as_json", is_flag=True)
def vm_list(as_json: bool, **endpoint: Any) -> None:
    """List instances."""
    with _open_driver(**endpoint) as driver:
        _print_instances(driver.list_instances(), as_json)


@vm.command("show")
@_endpoint_options
@click.argument("ref")
def vm_show(ref: str, **endpoint: Any) -> None:
    """Show one instance (by id or name) as JSON."""
    with _open_driver(**endpoint) as driver:
        click.echo(_find(driver, ref).model_dump_json(indent=2))


def _find(driver: Driver, ref: str) -> Any:
    from virtdrivers.errors import InstanceNotFound

    try:
        return driver.get_instance(ref)
    except InstanceNotFound:
        return driver.find_instance(ref)


@vm.command("create")
@_endpoint_options
@click.argument("name")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--memory", "memory_mb", type=int, default=512, show_default=True, help="MiB.")
@click.option("--disk", "disks", multiple=True, help="SIZE_GIB[:FORMAT], repeatable.")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata, repeatable.")
@click.option("--stopped", is_flag=True, help="Do not start it.")
@click.option("--image", help="Boot from this image (id or name, see 'virtdrivers images').")
@click.option("--image-mode", type=click.Choice(["cow", "copy"]), help="Root disk as a copy-on-write child or a copy.")
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="NET[,mac=MAC][,model=MODEL]",
    help="A NIC on this network (id or name), repeatable.",
)
@click.option("--user-data", "user_data", type=click.File("r"), help="cloud-init user data file ('-' for stdin).")
@click.option("--hostname", help="The guest's host name (cloud-init meta-data local-hostname).")
def vm_create(
    name: str,
    vcpus: int,
    memory_mb: int,
    disks: tuple[str, ...],
    meta: tuple[str, ...],
    stopped: bool,
    image: str | None,
    image_mode: str | None,
    networks: tuple[str, ...],
    user_data: TextIO | None,
    hostname: str | None,
    **endpoint: Any,
) -> None:
    """Create an instance, blank or booting an image with NICs and user data."""
    from virtdrivers.objects import InstanceSpec

    disk_specs = []
    for d in disks:
        size, _, fmt = d.partition(":")
        disk_specs.append({"size_gib": int(size) if size.isdigit() else size, **({"format": fmt} if fmt else {})})
    metadata = dict(m.partition("=")[::2] for m in meta)
    nics = []
    for n in networks:
        net, *options = n.split(",")
        nic: dict[str, str] = {"network": net}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("mac", "model"):
                raise click.BadParameter(f"want NET[,mac=MAC][,model=MODEL], got {n!r}", param_hint="--network")
            nic[key] = value
        nics.append(nic)
    cloud_init = None
    if user_data is not None or hostname is not None:
        cloud_init = {"user_data": user_data.read() if user_data else None, "hostname": hostname}
    spec = InstanceSpec(
        name=name,
        vcpus=vcpus,
        memory_mb=memory_mb,
        disks=disk_specs,
        metadata=metadata,
        start=not stopped,
        image=image,
        image_mode=image_mode,
        nics=nics,
        user_data=cloud_init,
    )
    with _open_driver(**endpoint) as driver:
        info = driver.create(spec, progress=lambda f, msg: click.echo(f"  {f:4.0%} {msg}", err=True))
        click.echo(info.model_dump_json(indent=2))


@vm.command("addresses")
@_endpoint_options
@click.argument("ref")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0, help="Seconds to wait for a first address.")
@click.option("--json", "as_json", is_flag=True)
def vm_addresses(ref: str, wait_s: float, as_json: bool, **endpoint: Any) -> None:
    """The guest's addresses per NIC, and who reported them."""
    with _open_driver(**endpoint) as driver:
        instance_id = _find(driver, ref).id
        deadline = time.monotonic() + wait_s
        found = driver.guest_addresses(instance_id)
        while not found and time.monotonic() < deadline:
            time.sleep(0.5)
            found = driver.guest_addresses(instance_id)
    if as_json:
        click.echo(json.dumps([a.model_dump(mode="json") for a in found], indent=2))
        return
    if not found:
        click.echo(f"{ref}: no address reported yet", err=True)
    for entry in found:
        click.echo(f"{entry.mac}  {' '.join(entry.addresses) or '-'}  ({entry.source}, {entry.observed_at:%H:%M:%S})")


@vm.command("console")
@_endpoint_options
@click.argument("ref")
@click.option("--bytes", "max_bytes", type=click.IntRange(min=1), default=64 * 1024, show_default=True)
def vm_console(ref: str, max_bytes: int, **endpoint: Any) -> None:
    """The tail of the instance's serial console."""
    with _open_driver(**endpoint) as driver:
        click.echo(driver.console_output(_find(driver, ref).id, max_bytes=max_bytes), nl=False)


@vm.command("metrics")
@_endpoint_options
@click.argument("ref")
def vm_metrics(ref: str, **endpoint: Any) -> None:
    """Cumulative CPU, memory, disk and network counters (JSON); two readings give rates."""
    with _open_driver(**endpoint) as driver:
        click.echo(driver.instance_metrics(_find(driver, ref).id).model_dump_json(indent=2))


@main.command()
@_endpoint_options
@click.option("--json", "as_json", is_flag=True)
def images(as_json: bool, **endpoint: Any) -> None:
    """Images instances can boot from."""
    with _open_driver(**endpoint) as driver:
        found = driver.list_images()
    if as_json:
        click.echo(json.dumps([i.model_dump(mode="json") for i in found], indent=2))
        return
    for image in found:
        size = f"{image.virtual_size_bytes / 1024**3:.1f} GiB"
        fmt = image.disk_format.value if image.disk_format else "-"
        click.echo(f"{image.id}  {image.name}  {fmt}  {size}  {image.os_distro or image.os_type or ''}".rstrip())


@main.command()
@_endpoint_options
@click.option("--json", "as_json", is_flag=True)
def networks(as_json: bool, **endpoint: Any) -> None:
    """Networks NICs can be put on."""
    with _open_driver(**endpoint) as driver:
        found = driver.list_networks()
    if as_json:
        click.echo(json.dumps([n.model_dump(mode="json") for n in found], indent=2))
        return
    for net in found:
        click.echo(f"{net.id}  {net.name}  {net.kind}".rstrip())


def _power_command(name: str, help_text: str, action: Callable[[Driver, str], Any]) -> None:
    @vm.command(name, help=help_text)
    @_endpoint_options
    @click.argument("ref")
    def command(ref: str, **endpoint: Any) -> None:
        with _open_driver(**endpoint) as driver:
            result = action(driver, _find(driver, ref).id)
            click.echo(f"{ref}: {result.power_state.value}" if result is not None else f"{ref}: deleted")


_power_command("start", "Power an instance on.", lambda d, i: d.power_on(i))
_power_command("stop", "Shut an instance down gracefully (forced after 60 s).", lambda d, i: d.power_off(i))
_power_command("delete", "Destroy an instance and its disks.", lambda d, i: d.destroy(i))


@vm.command("reap")
@_endpoint_options
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds after which a create whose owner cannot be checked (another host) counts as abandoned.",
)
@click.option("--json", "as_json", is_flag=True)
def vm_reap(dry_run: bool, grace_s: float, as_json: bool, **endpoint: Any) -> None:
    """Find and remove what creates killed midway left behind: instances, and disks no instance uses."""
    with _open_driver(**endpoint) as driver:
        found = driver.reap(dry_run=dry_run, grace_s=grace_s)
    if as_json:
        click.echo(json.dumps([f.model_dump(mode="json") for f in found], indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    for item in found:
        where = f" on {item.node}" if item.node else ""
        click.echo(f"{verb} {item.kind} {item.name or item.ref} ({item.ref}){where}: {item.reason}")
    click.echo(f"{len(found)} leftover(s) {'found' if dry_run else 'removed'}", err=True)


# -- migrate ---------------------------------------------------------------------------------

if TYPE_CHECKING:
    from virtdrivers.migration import MigrationRecord, MigrationStore, Orchestrator


@main.group()
def migrate() -> None:
    """Move and resize instances through the resumable migration orchestrator.

    Migration state lives in a database, not on the compute host: --db URL
    (or $VIRTDRIVERS_MIGRATION_DB), by default a SQLite file under
    $XDG_STATE_HOME/virtdrivers. Point several hosts at one PostgreSQL database
    and any of them can resume what another started. A migration interrupted
    by a crash is finished by "migrate resume" or undone by "migrate revert".
    """


def _db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_url",
        envvar="VIRTDRIVERS_MIGRATION_DB",
        help="Migration store URL (sqlite:///PATH or postgresql://...). Default: a SQLite file in the state dir.",
    )(func)


def _store(db_url: str | None) -> MigrationStore:
    from virtdrivers.migration import MigrationStore

    return MigrationStore(db_url)


def _run_with_progress(orch: Orchestrator, migration_id: str) -> MigrationRecord:
    """Run a migration here, drawing its steps and the driver's progress as they happen."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as bar:
        task = bar.add_task(migration_id[:8], total=1.0, message="")

        def on_boundary(mid: str, step: str, phase: str) -> None:
            if phase != "acted":
                bar.update(task, description=step, message=phase)

        def on_progress(mid: str, step: str, fraction: float, message: str) -> None:
            bar.update(task, description=step, completed=fraction, message=message)

        orch.on_boundary, orch.on_progress = on_boundary, on_progress
        try:
            record = orch.run(migration_id)
        finally:
            orch.on_boundary = orch.on_progress = None
        bar.update(task, completed=1.0 if record.status == "done" else record.progress, message=record.status)
    return record


def _record_json(record: MigrationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "instance_id": record.instance_id,
        "status": record.status,
        "step": record.step,
        "phase": record.phase,
        "progress": record.progress,
        "message": record.message,
        "owner": record.owner,
        "error": record.error,
        "endpoint": record.endpoint,
        "spec": record.spec,
        "plan": record.plan,
    }


def _finish(record: MigrationRecord, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_record_json(record), indent=2))
    else:
        tail = f" ({record.error})" if record.error else ""
        click.echo(f"{record.id}: {record.kind} {record.status}{tail}")
    if record.status in ("reverted", "rejected"):
        sys.exit(1)


@migrate.command("start")
@_endpoint_options
@_db_option
@click.argument("ref")
@click.option(
    "--kind", type=click.Choice(["cold", "resize", "live", "evacuate"]), required=True, help="Migration flavour."
)
@click.option("--to", "node", help="Destination node (default: chosen by free capacity; same node for resize).")
@click.option("--vcpus", type=int, help="Resize: new vCPU count.")
@click.option("--memory", "memory_mb", type=int, help="Resize: new memory in MiB.")
@click.option("--allow-cold-fallback", is_flag=True, help="Live: stop, move and restart if it cannot move live.")
@click.option("--shutdown-timeout", type=float, default=60.0, show_default=True, help="Seconds for a clean stop.")
@click.option("--detach", is_flag=True, help="Only record it; 'migrate resume' (from any host) runs it.")
@click.option("--json", "as_json", is_flag=True)
def migrate_start(
    ref: str,
    kind: str,
    node: str | None,
    vcpus: int | None,
    memory_mb: int | None,
    allow_cold_fallback: bool,
    shutdown_timeout: float,
    detach: bool,
    as_json: bool,
    db_url: str | None,
    **endpoint: Any,
) -> None:
    """Start migrating an instance (by id or name) and follow it to the end."""
    from virtdrivers.migration import MigrationSpec, Orchestrator

    store = _store(db_url)
    with _open_driver(**endpoint) as driver, Orchestrator(store, driver) as orch:
        info = _find(driver, ref)
        spec = MigrationSpec(
            kind=kind,
            instance_id=info.id,
            node=node,
            vcpus=vcpus,
            memory_mb=memory_mb,
            allow_cold_fallback=allow_cold_fallback,
            shutdown_timeout=shutdown_timeout,
        )
        record = orch.start(spec)
        click.echo(f"migration {record.id}: {kind} of {info.name}", err=True)
        if not detach:
            record = _run_with_progress(orch, record.id)
    _finish(record, as_json)


@migrate.command("status")
@_db_option
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="Follow it (run by any orchestrator) until it ends.")
def migrate_status(migration_id: str, as_json: bool, watch: bool, db_url: str | None) -> None:
    """Show one migration (by id or unique id prefix) with its step history."""
    store = _store(db_url)
    record = store.find(migration_id)
    if watch and record.active:
        record = _watch(store, record.id)
    if as_json:
        data = _record_json(record)
        data["events"] = [
            {"at": e.at, "owner": e.owner, "step": e.step, "phase": e.phase, "detail": e.detail}
            for e in store.events(record.id)
        ]
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{record.id}[/] {record.kind} of {record.instance_id}: [bold]{record.status}[/]"
        f" at {record.step or '-'} ({record.phase or '-'}), {record.progress:.0%}"
    )
    if record.error:
        console.print(f"error: {record.error}", markup=False)
    table = Table("time", "owner", "step", "phase", "detail")
    for e in store.events(record.id):
        stamp = time.strftime("%H:%M:%S", time.localtime(e.at))
        table.add_row(stamp, e.owner or "-", e.step or "-", e.phase, e.detail)
    console.print(table)


def _watch(store: MigrationStore, migration_id: str) -> MigrationRecord:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
        transient=not console.is_terminal,
    ) as bar:
        task = bar.add_task("", total=1.0, message="")
        while True:
            record = store.get(migration_id)
            bar.update(
                task, description=record.step or record.status, completed=record.progress, message=record.message
            )
            if not record.active:
                return record
            time.sleep(0.5)  # poll the store: the migration may be run by a process on another host


@migrate.command("list")
@_db_option
@click.option("--active", is_flag=True, help="Only unfinished migrations.")
@click.option("--json", "as_json", is_flag=True)
def migrate_list(active: bool, as_json: bool, db_url: str | None) -> None:
    """List migrations, oldest first."""
    from virtdrivers.migration import ACTIVE

    records = _store(db_url).list_migrations(statuses=ACTIVE if active else None)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "instance", "status", "step", "progress", "owner", "error")
    for r in records:
        step = f"{r.step}:{r.phase}" if r.step else "-"
        table.add_row(
            r.id[:8], r.kind, r.instance_id, r.status, step, f"{r.progress:.0%}", r.owner or "-", r.error or ""
        )
    Console().print(table)


@migrate.command("resume")
@_endpoint_options
@_db_option
@click.argument("migration_id", required=False)
@click.option("--json", "as_json", is_flag=True)
def migrate_resume(migration_id: str | None, as_json: bool, db_url: str | None, **endpoint: Any) -> None:
    """Finish (or finish reverting) one interrupted migration, or every one of this endpoint."""
    from virtdrivers.migration import ACTIVE, MigrationBusy, Orchestrator

    store = _store(db_url)
    with _open_driver(**endpoint) as driver, Orchestrator(store, driver) as orch:
        if migration_id:
            ids = [store.find(migration_id).id]
        else:
            ids = [r.id for r in store.list_migrations(endpoint=orch.endpoint, statuses=ACTIVE)]
            if not ids:
                click.echo("nothing to resume", err=True)
                return
        records = []
        for mid in ids:
            try:
                records.append(_run_with_progress(orch, mid))
            except MigrationBusy as exc:
                if migration_id:
                    raise
                click.echo(f"skipped: {exc}", err=True)
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2))
    else:
        for r in records:
            click.echo(f"{r.id}: {r.kind} {r.status}" + (f" ({r.error})" if r.error else ""))
    if any(r.status in ("reverted", "rejected") for r in records) and migration_id:
        sys.exit(1)


@migrate.command("revert")
@_endpoint_options
@_db_option
@click.argument("migration_id")
@click.option("--json", "as_json", is_flag=True)
def migrate_revert(migration_id: str, as_json: bool, db_url: str | None, **endpoint: Any) -> None:
    """Undo an unfinished migration: put the instance back where, as big and as powered as it was.

    With endpoint options the revert runs here; without, the orchestrator running the
    migration reverts it at its next step, or the next "migrate resume" does.
    """
    from virtdrivers.migration import Orchestrator

    store = _store(db_url)
    record = store.request_revert(store.find(migration_id).id)
    if not (endpoint.get("driver_name") or endpoint.get("endpoint_name")):
        click.echo(f"{record.id}: revert requested", err=True)
        return
    with _open_driver(**endpoint) as driver, Orchestrator(store, driver) as orch:
        record = _run_with_progress(orch, record.id)
    _finish(record, as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
