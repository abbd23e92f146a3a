"""The ``vpbx`` command: serve, migrate and operator commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vpbx.errors import ConfigError, ValidationFailed
from vpbx.logs import configure_logging, get_logger
from vpbx.settings import Settings, ensure_demo_secrets, load_settings

app = typer.Typer(help="vpbx: open-source cloud PBX", no_args_is_help=True, add_completion=False)
domain_app = typer.Typer(help="Domains (tenants)", no_args_is_help=True)
user_app = typer.Typer(help="Users of a domain", no_args_is_help=True)
operator_app = typer.Typer(help="Platform operators", no_args_is_help=True)
numbering_app = typer.Typer(help="The numbering table (recipients' time zones)", no_args_is_help=True)
amocrm_app = typer.Typer(help="amoCRM integration tools: the emulator, the widget", no_args_is_help=True)
app.add_typer(domain_app, name="domain")
app.add_typer(user_app, name="user")
app.add_typer(operator_app, name="operator")
app.add_typer(numbering_app, name="numbering")
app.add_typer(amocrm_app, name="amocrm")
log = get_logger("vpbx.cli")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory [VPBX_DATA_DIR]")]


def _settings(data_dir: Path | None, *, demo: bool = False, **overrides: Any) -> Settings:
    if demo:
        ensure_demo_secrets(data_dir or Path(os.environ.get("VPBX_DATA_DIR") or "data"))
    try:
        return load_settings(data_dir=data_dir, demo=demo or None, **overrides)
    except ConfigError as e:
        typer.echo(f"vpbx: configuration error: {e}", err=True)
        raise typer.Exit(2) from e


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (about 15–20 % cheaper SIP, telephony.md §6), else the standard loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise typer.BadParameter("VPBX_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _fail(e: ValidationFailed) -> typer.Exit:
    for err in e.errors:
        typer.echo(f"{err.field}: {err.msgid.format(**err.params)}", err=True)
    return typer.Exit(1)


@app.command()
def serve(
    data_dir: DataDirOpt = None,
    demo: Annotated[bool, typer.Option("--demo", help="Create the demo domain and print its logins")] = False,
    http_host: Annotated[str | None, typer.Option("--http-host")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port")] = None,
    sip_port: Annotated[int | None, typer.Option("--sip-port")] = None,
    rtp_ports: Annotated[str | None, typer.Option("--rtp-ports", help="A-B")] = None,
) -> None:
    """Run the PBX: the web cabinet and the SIP node (UDP and TCP) in one process."""
    from vpbx import store
    from vpbx.app import serve as run_server

    settings = _settings(
        data_dir, demo=demo, http_host=http_host, http_port=http_port, sip_port=sip_port, rtp_ports=rtp_ports
    )
    configure_logging(json=settings.log_json, level=settings.log_level)
    store.upgrade(settings.database_url)
    if demo:
        from vpbx.demo import DEMO_DOMAIN, ensure_demo

        if not settings.sip_default_domain:
            # a softphone pointed at the server's address (no DNS for the demo domain) lands in the demo
            settings = settings.model_copy(update={"sip_default_domain": DEMO_DOMAIN})
        from vpbx.amocrm.demo import demo_settings

        settings = demo_settings(settings)  # amoCRM: the emulator alongside, on a free loopback port
        info = asyncio.run(ensure_demo(settings))
        _print_demo(info, settings)
    with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        runner.run(run_server(settings))


@app.command()
def migrate(
    data_dir: DataDirOpt = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to --revision (e.g. base)")] = False,
) -> None:
    """Upgrade (or downgrade) the database schema."""
    from vpbx import store

    settings = _settings(data_dir)
    configure_logging(json=settings.log_json, level=settings.log_level)
    if down:
        store.downgrade(settings.database_url, revision)
    else:
        store.upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def demo(data_dir: DataDirOpt = None) -> None:
    """Create the demo domain (once) and print its cabinet URL, logins and SIP credentials."""
    from vpbx import store
    from vpbx.demo import ensure_demo

    settings = _settings(data_dir, demo=True)
    configure_logging(json=settings.log_json, level=settings.log_level)
    store.upgrade(settings.database_url)
    _print_demo(asyncio.run(ensure_demo(settings)), settings)


def _print_demo(info: dict[str, object], settings: Settings) -> None:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    lines = [
        "",
        "vpbx demo is ready",
        f"  cabinet:   http://{host}:{settings.http_port}/",
        f"  admin:     {info['admin_login']}  /  {info['admin_password']}",
        f"  operator:  {info['operator_login']}  /  {info['operator_password']}",
        f"  SIP:       server {host}:{settings.sip_port} (UDP/TCP), domain {info['domain']} or the address",
    ]
    users = info["users"]
    assert isinstance(users, list)
    for u in users:
        lines.append(
            f"    {u['pin']}  {u['display_name']:<24} login {u['sip_login']:<10} password {u['sip_password']}"
        )
    if "line" in info:
        lines.append(f"  line:      {info['line']} → group {info['group_pin']} in office hours, else a menu")
    from vpbx.amocrm.demo import DemoAmo, emulator_url

    if DemoAmo.wanted(settings):
        url = emulator_url(settings)
        lines.append(f"  amoCRM:    emulator {url}, account demo.amocrm.ru (state: {url}/__emu__/state)")
        lines.append(
            f"             widget harness: {url}/__emu__/widget-harness?account=demo.amocrm.ru&user_id=5001"
        )
    lines.append(f"  the same as JSON: {settings.data_dir / 'demo.json'}")
    typer.echo("\n".join(lines) + "\n")


@domain_app.command("create")
def domain_create(
    name: str,
    data_dir: DataDirOpt = None,
    timezone: Annotated[str, typer.Option()] = "Europe/Moscow",
    channels: Annotated[int, typer.Option()] = 10,
    admin_password: Annotated[str | None, typer.Option(help="Creates admin@NAME with this password")] = None,
) -> None:
    """Create a domain, optionally with its first administrator (extension 100)."""
    from vpbx.cli_ops import create_domain

    settings = _settings(data_dir)
    try:
        typer.echo(asyncio.run(create_domain(settings, name, timezone, channels, admin_password)))
    except ValidationFailed as e:
        raise _fail(e) from e


@user_app.command("create")
def user_create(
    domain: str,
    name: str,
    pin: Annotated[str, typer.Option()],
    data_dir: DataDirOpt = None,
    display_name: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str, typer.Option()] = "user",
    password: Annotated[str | None, typer.Option(help="Cabinet password")] = None,
) -> None:
    """Create a user in a domain; prints the SIP credentials."""
    from vpbx.cli_ops import create_user

    settings = _settings(data_dir)
    try:
        out = asyncio.run(create_user(settings, domain, name, pin, display_name or name, role, password))
    except ValidationFailed as e:
        raise _fail(e) from e
    typer.echo(json.dumps(out, ensure_ascii=False))


@operator_app.command("create")
def operator_create(
    login: str,
    data_dir: DataDirOpt = None,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)] = "",
) -> None:
    """Create a platform operator account."""
    from vpbx.cli_ops import create_operator

    settings = _settings(data_dir)
    try:
        asyncio.run(create_operator(settings, login, password))
    except ValidationFailed as e:
        raise _fail(e) from e
    typer.echo(f"operator {login} created")


@numbering_app.command("load")
def numbering_load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    data_dir: DataDirOpt = None,
) -> None:
    """Load a regulator's numbering file (Rossvyaz ABC-3xx/4xx/8xx, DEF-9xx CSV) into the numbering table."""
    from vpbx.autoinformer.tz import NumberingFileError
    from vpbx.cli_ops import load_numbering

    settings = _settings(data_dir)
    try:
        typer.echo(asyncio.run(load_numbering(settings, file)))
    except NumberingFileError as e:
        typer.echo(f"vpbx: {file}: {e}", err=True)
        raise typer.Exit(1) from e


@amocrm_app.command("emulator")
def amocrm_emulator(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8766,
    fixture: Annotated[
        Path | None, typer.Option("--fixture", exists=True, dir_okay=False, help="Fixture (JSON)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", exists=True, dir_okay=False, help="emulator.toml (switches)")
    ] = None,
) -> None:
    """Run the amoCRM emulator (amocrm.md §4): accounts at /_acc/{base_domain}, control API at /__emu__."""
    from vpbx.amocrm.emulator import make_world, read_fixture, serve

    configure_logging(json=False, level="info")
    try:
        world = make_world(read_fixture(fixture), config=config)
    except (ValueError, KeyError) as e:
        typer.echo(f"vpbx: emulator fixture or config: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"amoCRM emulator on http://{host}:{port} (accounts: {', '.join(world.hosts)})")
    asyncio.run(serve(world, host=host, port=port))


@amocrm_app.command("widget-build")
def amocrm_widget_build(
    backend: Annotated[
        str, typer.Option("--backend", help="Our public origin, e.g. https://pbx.example.org")
    ],
    name: Annotated[str, typer.Option("--name", help="The widget's name in amoCRM")] = "Виртуальная АТС",
    out: Annotated[Path, typer.Option("--out", help="The zip to write")] = Path("dist/amocrm-widget.zip"),
) -> None:
    """Build the amoCRM widget's zip (amocrm.md §3.1) with the backend origin baked in."""
    from vpbx.amocrm.bundle import BundleError, build

    try:
        path = build(backend, name, out)
    except BundleError as e:
        typer.echo(f"vpbx: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(str(path))


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.echo(f"vpbx: configuration error: {e}", err=True)
        sys.exit(2)
