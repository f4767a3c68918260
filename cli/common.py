"""What every command shares: the app, the console, Prefect's embedded mode and printing.

Prefect's embedded state is pointed at ``$MLOPS_HOME`` (:func:`core.settings.prepare_environment`)
before Prefect is imported, so commands import flows and tasks inside their bodies.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from prefect.states import State

    from core.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Intelli-Rate MLOps pipeline.")
# Piped output (CI, a log file) has no width; rich would fold every table to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="Model name (repeatable); default all.")
]


def finish(state: State) -> None:
    """Print a flow's final state message; exit 1 unless it completed."""
    if state.is_completed():
        console.print(f"[green]{state.message}[/]")
        return
    console.print(f"[red]{state.name}[/]: {state.message}")
    raise typer.Exit(1)


@contextmanager
def embedded_prefect() -> Iterator[None]:
    """Run the body's flows on a configured Prefect server, or on this process's embedded API.

    Without a server in Prefect's settings (``PREFECT_API_URL``, a profile, ``prefect.toml``),
    the embedded API (:mod:`adapters.prefect_server`) is started unless the command started it
    already, and awaited. Flow-run heartbeats are off there: they let a server notice crashed
    runs of workers; the embedded API has no workers, and each flow run otherwise spends about
    a second joining the heartbeat thread on exit.
    """
    from adapters import prefect_server

    api = prefect_server.start()
    if api is None:
        yield
        return
    api.wait()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def print_serving(settings: Settings) -> None:
    """Where each model's endpoint serves, and (local endpoint) a request to try on it."""
    import shlex

    from adapters.endpoints import open_target
    from adapters.layout import PublishError
    from adapters.store import store_from_settings
    from core.config import load_model_configs, load_platform_config
    from tasks.rollout import resolve_version

    target = open_target(settings, load_platform_config(settings.config_dir))
    if target is None:
        return
    store = store_from_settings(settings)
    lines = []
    for cfg in load_model_configs(settings.config_dir):
        serving = target.describe(cfg.name) if cfg.endpoint.enabled else None
        if serving is None or serving.version is None:
            continue
        lines.append(f"  {cfg.name} {serving.version} ({serving.status}): {serving.address}")
        if target.kind != "local":
            continue
        try:
            example = resolve_version.fn(store, cfg, serving.version).example_request[:1]
        except (PublishError, OSError, ValueError):
            continue
        body = shlex.quote(json.dumps({"instances": example}))
        lines.append(
            f"    curl -s -X POST {serving.address} -H 'Content-Type: application/json' -d {body}"
        )
    if lines:
        console.print(f"[bold]serving on the {target.kind} endpoint[/]:", highlight=False)
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
        if target.kind == "local":
            console.print("stop it with: mlops endpoint stop", highlight=False)
