"""``mlops retrain | rollout | rollback | cleanup``: run the flows and print their outcome."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from adapters import prefect_server
from cli.common import ModelOpt, app, console, embedded_prefect, finish, print_serving
from core.config import ModelConfig, load_model_configs
from core.settings import Settings, load_settings, prepare_environment


@app.command()
def retrain(
    model: ModelOpt = None,
    force: Annotated[bool, typer.Option(help="Retrain even without new data.")] = False,
    always_run: Annotated[
        bool,
        typer.Option(
            "--always-run",
            help="Start a flow run even when no model has new data (it records them as skipped).",
        ),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why this run happens (kept in lineage).")] = "manual",
) -> None:
    """Run the retrain flow (export, validate, train, evaluate, gate, publish, register).

    Unless ``--force`` or ``--always-run``, it first asks the source whether any requested
    model has rows past its last accepted snapshot; when none has, it says so per model and
    exits 0 without starting Prefect, so no flow run is recorded.
    """
    settings = prepare_environment()
    # An unknown model or a bad config stops here, with exit code 2, whichever path follows.
    cfgs = load_model_configs(settings.config_dir, model or None)
    console.print(f"store: {settings.store}\nmlflow: {settings.tracking_uri}")
    if not (force or always_run):
        idle = _nothing_new(settings, cfgs)
        if idle is not None:
            _print_summary(idle)
            console.print(
                "no flow run started: no model has new data "
                "(--always-run records a run anyway, --force retrains)",
                highlight=False,
            )
            return
    prefect_server.start()  # the embedded API starts while the flows import
    from flows.retrain import retrain as retrain_flow

    with embedded_prefect():
        state = retrain_flow(models=model or None, force=force, reason=reason, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        console.print(f"[red]retrain failed[/]: {summary}")
        raise typer.Exit(1)
    _print_summary(summary)
    print_serving(settings)
    if state.is_failed():
        raise typer.Exit(1)


def _nothing_new(settings: Settings, cfgs: list[ModelConfig]) -> dict[str, Any] | None:
    """The summary a run would end with when no requested model has new rows; else ``None``.

    The check is the export's own rule (:func:`tasks.watermark.has_new_rows`), one query per
    model that stops at the first row, and it imports neither Prefect nor MLflow nor Great
    Expectations: a run with nothing to do costs the command's imports and those queries,
    not the ephemeral Prefect API's start. When the store or the source cannot answer (an
    unreachable database, a missing table), the flow runs and its export reports the error,
    with its retries, exactly as it would without this check.
    """
    from adapters.store import store_from_settings
    from core.outcome import NO_NEW_DATA, ModelOutcome, headline, summary_rows
    from tasks.watermark import has_new_rows

    try:
        store = store_from_settings(settings)
        if any(has_new_rows(settings.source_url, store, cfg.dataset) for cfg in cfgs):
            return None
    except Exception:  # whatever it is, the flow meets it too and reports it as today
        return None
    outcomes = [ModelOutcome(cfg.name, "skipped", note=NO_NEW_DATA) for cfg in cfgs]
    gate_metrics = {cfg.name: list(cfg.gate.metrics) for cfg in cfgs}
    return {"headline": headline(outcomes), "rows": summary_rows(outcomes, gate_metrics)}


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
    prefect_server.start()  # the embedded API starts while the flows import
    from flows.rollout import rollout as rollout_flow

    with embedded_prefect():
        state = rollout_flow(model, version, reason=reason, return_state=True)
    finish(state)
    print_serving(load_settings())


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
    prefect_server.start()  # the embedded API starts while the flows import
    from flows.rollout import rollback as rollback_flow

    with embedded_prefect():
        state = rollback_flow(model, to, reason=reason, return_state=True)
    finish(state)
    print_serving(load_settings())


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
    prefect_server.start()  # the embedded API starts while the flows import
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
