"""``mlops``: a thin command line over the flows and tasks.

    mlops seed [--weeks N] [--append-weeks N] [--drift X] [--corrupt TABLE] [--if-empty]
    mlops retrain [--model NAME ...] [--force] [--reason TEXT]
    mlops status [--model NAME ...] [--json]
    mlops rollout MODEL [--version vN]
    mlops rollback MODEL [--to vN]
    mlops endpoint status|stop|start
    mlops cleanup [--apply] [--yes] [--all] [--clean-s3] [--region R]
    mlops monitor [--model NAME ...] [--trigger/--no-trigger]

Prefect's embedded state is pointed at ``$MLOPS_HOME`` before Prefect is imported, so the
imports of flows and tasks happen inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tasks.settings import load_settings, prepare_environment

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Intelli-Rate MLOps pipeline.")
# Piped output (CI, a log file) has no width; rich would fold every table to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)

ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="Model name (repeatable); default all.")
]


@app.command()
def seed(
    weeks: Annotated[
        int, typer.Option(min=2, max=520, help="Weeks to create in an empty database.")
    ] = 8,
    append_weeks: Annotated[
        int, typer.Option(min=1, max=52, help="Weeks to append when data exists.")
    ] = 1,
    drift: Annotated[
        float, typer.Option(min=0.0, max=5.0, help="Shift distributions (0 = none).")
    ] = 0.0,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    corrupt: Annotated[
        str | None, typer.Option(help="Append rows that break this table's expectations.")
    ] = None,
    if_empty: Annotated[bool, typer.Option(help="Do nothing when the database has data.")] = False,
) -> None:
    """Create the source database, or extend it by a week (drifted on request)."""
    settings = prepare_environment()
    from tasks.source import corrupt_source, seed_source, source_has_data

    url = settings.source_url
    if corrupt:
        counts = corrupt_source(url, corrupt)
        console.print(f"[red]appended bad rows to {corrupt}[/]: {counts}")
        return
    if if_empty and source_has_data(url):
        console.print(f"source database already has data: {_mask(url)}")
        return
    with console.status("generating source data...") as status:
        counts = seed_source(
            url,
            weeks=weeks,
            append_weeks=append_weeks,
            drift=drift,
            seed=seed_value,
            progress=lambda msg: status.update(msg),
        )
    for table, rows in counts.items():
        console.print(f"  {table}: +{rows} rows")
    console.print(f"source database: {_mask(url)}")


@app.command()
def retrain(
    model: ModelOpt = None,
    force: Annotated[bool, typer.Option(help="Retrain even without new data.")] = False,
    reason: Annotated[str, typer.Option(help="Why this run happens (kept in lineage).")] = "manual",
) -> None:
    """Run the retrain flow (export, validate, train, evaluate, gate, publish, register)."""
    settings = prepare_environment()
    from flows.retrain import retrain as retrain_flow

    console.print(f"store: {settings.store}\nmlflow: {settings.tracking_uri}")
    with embedded_prefect():
        state = retrain_flow(models=model or None, force=force, reason=reason, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        console.print(f"[red]retrain failed[/]: {summary}")
        raise typer.Exit(1)
    _print_summary(summary)
    _print_serving(settings)
    if state.is_failed():
        raise typer.Exit(1)


def _print_summary(summary: dict[str, Any]) -> None:
    cols = ("model", "status", "version", "metrics", "gate", "published", "note")
    table = Table(title=summary["headline"], show_lines=True)
    for col in cols:
        table.add_column(col, overflow="fold")
    colours = {"promoted": "green", "rejected": "yellow", "skipped": "blue", "failed": "red"}
    for row in summary["rows"]:
        cells = [str(row[c]) for c in cols]
        cells[1] = f"[{colours.get(row['status'], 'white')}]{cells[1]}[/]"
        table.add_row(*cells)
    console.print(table)


def _print_serving(settings: Any) -> None:
    """Where each model's endpoint serves, and (local endpoint) a request to try on it."""
    import shlex

    from tasks.config import load_model_configs, load_platform_config
    from tasks.endpoints import open_target
    from tasks.publish import PublishError
    from tasks.rollout import resolve_version

    target = open_target(settings, load_platform_config(settings.config_dir))
    if target is None:
        return
    lines = []
    for cfg in load_model_configs(settings.config_dir):
        serving = target.describe(cfg.name) if cfg.endpoint.enabled else None
        if serving is None or serving.version is None:
            continue
        lines.append(f"  {cfg.name} {serving.version} ({serving.status}): {serving.address}")
        if target.kind != "local":
            continue
        try:
            example = resolve_version.fn(settings, cfg, serving.version).example_request[:1]
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


@app.command()
def status(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per model: latest.json, champion alias, endpoint, metrics, lineage; flags disagreement."""
    settings = prepare_environment()
    from tasks.status import model_status

    report = model_status(settings, model or None)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return
    table = Table(title=f"store {settings.store}", show_lines=True)
    for col in (
        "model",
        "latest.json",
        "mlflow champion",
        "endpoint",
        "agree",
        "metrics, gate",
        "published, lineage",
    ):
        table.add_column(col, overflow="fold")
    for r in report:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in (r.get("gate_metrics") or {}).items())
        lin = r.get("lineage") or {}
        lineage = "\n".join(
            f"{k}: {lin[k]}"
            for k in ("snapshot_id", "code_version", "flow_run_id", "mlflow_run_id")
            if k in lin
        )
        agree = "[green]yes[/]" if r["agree"] else f"[red]NO[/] {r.get('problem', '')}"
        ep = r.get("endpoint")
        endpoint = (
            f"{ep['version']} {ep['status']}\n{ep['address']}"
            if ep
            else ("-" if not r.get("endpoint_target") else "none")
        )
        table.add_row(
            r["model"],
            str(r.get("latest_version") or "-"),
            f"{r.get('champion_alias') or '-'} ({r.get('champion_store_version') or '-'})",
            endpoint,
            agree,
            f"{metrics or '-'}\ngate: {r.get('gate') or '-'}",
            f"{r.get('uri') or '-'}\n{lineage}\nrollback: {r['rollback']}".strip(),
        )
    console.print(table)


@app.command()
def rollout(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[
        str | None, typer.Option(help="vN to serve; default the version latest.json names.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the promotion history.")] = "manual",
) -> None:
    """Deploy a published version, smoke-test it, then move latest.json and the champion alias."""
    prepare_environment()
    from flows.rollout import rollout as rollout_flow

    with embedded_prefect():
        state = rollout_flow(model, version, reason=reason, return_state=True)
    _finish(state)
    _print_serving(load_settings())


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[
        str | None, typer.Option(help="vN to return to; default the one the champion replaced.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the promotion history.")] = "rollback",
) -> None:
    """Put the previous (or a named) version back on the endpoint, with pointer and alias."""
    prepare_environment()
    from flows.rollout import rollback as rollback_flow

    with embedded_prefect():
        state = rollback_flow(model, to, reason=reason, return_state=True)
    _finish(state)
    _print_serving(load_settings())


@app.command()
def cleanup(
    model: ModelOpt = None,
    apply: Annotated[bool, typer.Option(help="Delete the plan (default: dry run).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    all_models: Annotated[
        bool, typer.Option("--all", help="Also models no longer configured, and their endpoints.")
    ] = False,
    clean_s3: Annotated[
        bool, typer.Option("--clean-s3", help="Also old store versions and their MLflow versions.")
    ] = False,
    region: Annotated[str | None, typer.Option(help="AWS region (default the configured).")] = None,
    reason: Annotated[str, typer.Option(help="Why; shown on the plan artifact.")] = "manual",
) -> None:
    """Print what nothing uses any more; with --apply, delete exactly that."""
    prepare_environment()
    from flows.cleanup import cleanup as cleanup_flow

    kwargs: dict[str, Any] = dict(
        models=model or None,
        clean_store=clean_s3,
        all_models=all_models,
        region=region,
        reason=reason,
    )
    with embedded_prefect():
        planned = cleanup_flow(apply=False, **kwargs)
    _print_plan(planned["plan"], "cleanup plan (dry run)")
    deletions = [p for p in planned["plan"] if p["action"] == "delete"]
    if not apply or not deletions:
        console.print(
            f"{len(deletions)} item(s) would be deleted"
            + ("" if apply else "; --apply deletes them")
        )
        return
    if not yes:
        if not sys.stdin.isatty():
            console.print("[red]refusing to delete without a terminal to confirm; add --yes[/]")
            raise typer.Exit(2)
        typer.confirm(f"Delete these {len(deletions)} item(s)?", abort=True)
    confirmed = [f"{p['kind']}:{p['name']}" for p in deletions]
    with embedded_prefect():
        result = cleanup_flow(apply=True, confirmed=confirmed, **kwargs)
    _print_plan(result["done"], "cleanup applied")
    failed = [d for d in result["done"] if str(d["outcome"]).startswith("failed")]
    if failed:
        console.print(f"[red]{len(failed)} deletion(s) failed[/]; run cleanup again to retry")
        raise typer.Exit(1)


def _print_plan(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for col in ("action", "kind", "name", "version", "reason", "monthly_usd", "outcome"):
        if any(col in r for r in rows):
            table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            *[
                str(r.get(c, "-"))
                for c in ("action", "kind", "name", "version", "reason", "monthly_usd", "outcome")
                if any(c in x for x in rows)
            ]
        )
    console.print(table)


def _finish(state: Any) -> None:
    """Print a flow's final state message; exit 1 unless it completed."""
    if state.is_completed():
        console.print(f"[green]{state.message}[/]")
        return
    console.print(f"[red]{state.name}[/]: {state.message}")
    raise typer.Exit(1)


@contextmanager
def embedded_prefect() -> Iterator[None]:
    """Without a Prefect server, turn flow-run heartbeats off.

    Heartbeats let a server notice crashed runs of workers; the ephemeral API has no workers,
    and each flow run otherwise spends about a second joining the heartbeat thread on exit.
    """
    import os

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _mask(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _register_subcommands() -> None:
    """Commands kept in their own modules: ``mlops endpoint ...`` and ``mlops monitor``."""
    from flows.cli_endpoint import app as endpoint_app
    from flows.cli_monitor import register

    app.add_typer(endpoint_app, name="endpoint")
    register(app)


_register_subcommands()


def main() -> None:
    """Entry point of the ``mlops`` command."""
    app()


if __name__ == "__main__":
    main()
