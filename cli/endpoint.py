"""``mlops endpoint``: look after the local endpoint (router and model processes on loopback).

    mlops endpoint status [--json]     router, what each model serves, stray processes
    mlops endpoint stop                stop the router and every model process
    mlops endpoint start [--model M]   serve again what latest.json names (after stop or a reboot)

The processes run detached from the command that started them (``mlops retrain`` starts them
on the first promotion); these commands find them through ``$MLOPS_HOME/endpoint/``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.common import console
from core.settings import prepare_environment

if TYPE_CHECKING:
    from adapters.endpoints.local import LocalTarget
    from core.settings import Settings

app = typer.Typer(
    name="endpoint",
    add_completion=False,
    no_args_is_help=True,
    help="The local endpoint: a router on loopback and one serving process per model.",
)


def _local() -> tuple[Settings, LocalTarget]:
    settings = prepare_environment()
    from adapters.endpoints.local import LocalTarget

    if settings.resolved_endpoint_target != "local":
        console.print(
            f"[yellow]note[/]: rollouts go to the {settings.resolved_endpoint_target!r} target "
            "(MLOPS_ENDPOINT_TARGET); this command looks after the local endpoint only"
        )
    return settings, LocalTarget.from_settings(settings)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Router, and per model: status, version, variants (pid, port), address."""
    _settings, target = _local()
    report = target.overview()
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return
    router = report["router"]
    state = f"[green]running[/] (pid {router['pid']})" if router["running"] else "[red]stopped[/]"
    console.print(f"router {report['url']}: {state}; state in {report['state_dir']}")
    if report["error"]:
        console.print(f"[red]{report['error']}[/]")
    if not report["models"]:
        console.print("no model is routed (mlops endpoint start serves what latest.json names)")
    else:
        table = Table(show_lines=True)
        for col in ("model", "status", "version", "variants", "address"):
            table.add_column(col, overflow="fold")
        colours = {"running": "green", "degraded": "yellow", "down": "red"}
        for model, row in report["models"].items():
            variants = "\n".join(
                f"{name}: {v['version']} weight {v['weight']} port {v['port']} pid {v['pid']}"
                + ("" if v["alive"] else " [red](not running)[/]")
                for name, v in row["variants"].items()
            )
            colour = colours.get(row["status"], "white")
            table.add_row(
                model,
                f"[{colour}]{row['status']}[/]",
                str(row["version"]),
                variants,
                row["address"],
            )
        console.print(table)
    if report["stray_variants"]:
        console.print(
            f"[yellow]not routed[/] (mlops cleanup --apply removes them): "
            f"{', '.join(report['stray_variants'])}"
        )


@app.command()
def stop() -> None:
    """Stop the router and every model process; delete the routes and unpacked models."""
    _settings, target = _local()
    stopped = target.stop()
    for line in stopped:
        console.print(f"stopped {line}")
    if not stopped:
        console.print("nothing was running")


@app.command()
def start(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Model name (repeatable).")
    ] = None,
) -> None:
    """Serve, for each model, the version its latest.json names; then smoke-test it."""
    settings, target = _local()
    from adapters.layout import PublishError
    from adapters.pointer import read_latest
    from adapters.store import store_from_settings
    from core.config import load_model_configs
    from core.endpoint import RolloutFailed
    from tasks.rollout import resolve_version

    failed = []
    store = store_from_settings(settings)
    for cfg in load_model_configs(settings.config_dir, model or None):
        if not cfg.endpoint.enabled:
            console.print(f"{cfg.name}: endpoint disabled in its config, skipped")
            continue
        if read_latest(store, cfg.name) is None:
            console.print(f"{cfg.name}: nothing promoted yet, skipped")
            continue
        try:
            wanted = resolve_version.fn(store, cfg, None)
            serving = target.deploy(wanted, lambda message: console.print(f"  {message}"))
            if wanted.example_request:
                target.invoke(cfg.name, wanted.example_request)
        except (RolloutFailed, PublishError) as exc:
            console.print(f"[red]{cfg.name}: {exc}[/]")
            failed.append(cfg.name)
            continue
        console.print(f"[green]{cfg.name}[/]: {serving.version} at {serving.address}")
    if failed:
        raise typer.Exit(1)
