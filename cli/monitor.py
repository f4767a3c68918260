"""``mlops monitor``: run the monitor flow and print what it found.

Like every command, it imports Prefect only after :func:`core.settings.prepare_environment` has
pointed its embedded state at ``$MLOPS_HOME``.

    mlops monitor                     # report; request retrain/weekly if a threshold is crossed
    mlops monitor --retrain           # ... and, without a server, run the retrain here
    mlops monitor --no-trigger --json
    mlops prometheus-rules > deployments/prometheus/rules.yml   # the alert rules, from the configs
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from adapters import prefect_server
from cli.common import app, console, embedded_prefect
from core.settings import prepare_environment


@app.command(name="monitor")
def monitor(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model name (repeatable); default all."),
    ] = None,
    deployment: Annotated[
        str, typer.Option(help="Deployment to run when a threshold is crossed.")
    ] = "retrain/weekly",
    trigger: Annotated[
        bool, typer.Option(help="Request the retrain deployment when a threshold is crossed.")
    ] = True,
    retrain: Annotated[
        bool,
        typer.Option(
            help="When a retrain is wanted and no server runs the deployment, retrain here."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare recent data with each champion's training data; ask for a retrain on drift."""
    prepare_environment()
    prefect_server.start()  # the embedded API starts while the flows import
    from flows.monitor import monitor as monitor_flow

    with embedded_prefect():
        result = monitor_flow(
            models=model or None, retrain_deployment=deployment if trigger else None
        )
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        _print_findings(result)
    request = result.get("request") or {}
    if result["triggered"] and retrain and not request.get("requested"):
        from flows.retrain import retrain as retrain_flow

        console.print(f"retraining here: {', '.join(result['triggered'])}")
        with embedded_prefect():
            state = retrain_flow(
                models=result["triggered"], reason=result["reason"], return_state=True
            )
        console.print(f"{state.name}: {state.message}")
        if not state.is_completed():
            raise typer.Exit(1)


def _print_findings(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="monitor", show_lines=True)
    for col in ("model", "champion", "verdict", "drifted columns (PSI)", "live metrics", "notes"):
        table.add_column(col, overflow="fold")
    for f in result["findings"]:
        psi = {d["feature"]: d["psi"] for d in f["features"]}
        age = f["champion_age_days"]
        table.add_row(
            f["model"],
            f"{f['champion_version'] or '-'}" + (f"\n{age:.1f} days" if age is not None else ""),
            "[red]retrain[/]: " + "; ".join(f["reasons"]) if f["triggered"] else "[green]ok[/]",
            ", ".join(f"{c} ({psi[c]:.2f})" for c in f["drifted"]) or "-",
            ", ".join(f"{k}={v:.3f}" for k, v in _headline(f["live_metrics"]).items()) or "-",
            "\n".join(f["notes"]) or "-",
        )
    console.print(table)
    request = result.get("request")
    if not result["triggered"]:
        console.print("no threshold crossed: no retrain requested")
    elif request and request.get("requested"):
        console.print(
            f"[yellow]retrain requested[/]: {request['deployment']} run "
            f"{request['flow_run_name']} ({request['flow_run_id']})\nreason: {result['reason']}"
        )
    elif request:
        console.print(f"[yellow]retrain wanted, not requested[/]: {request['note']}")
    else:
        console.print(f"[yellow]retrain wanted[/] (report only): {result['reason']}")


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    """The model's own metrics, without baselines, counts and per-series breakdowns."""
    skip = ("baseline", "n_")
    return {
        k: v
        for k, v in sorted(metrics.items())
        if not k.startswith(skip) and "__" not in k and k != "k"
    }


@app.command(name="prometheus-rules")
def prometheus_rules() -> None:
    """Print the Prometheus alert rules, thresholds from configs/ (platform and models).

    ``mlops prometheus-rules > deployments/prometheus/rules.yml`` after a threshold changes.
    """
    from core.alert_rules import render_rules
    from core.config import load_model_configs, load_platform_config

    settings = prepare_environment()
    platform = load_platform_config(settings.config_dir)
    sys.stdout.write(render_rules(platform, load_model_configs(settings.config_dir)))
