"""``mlops experiment start | status | stop``: online experiments (README "Experiments")."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from adapters import prefect_server
from cli.common import console, embedded_prefect, finish
from core.settings import prepare_environment

app = typer.Typer(no_args_is_help=True, help="Shadow and A/B experiments on live traffic.")

Model = Annotated[str, typer.Argument(help="Model name.")]


@app.command()
def start(
    model: Model,
    challenger: Annotated[str, typer.Option(help="vN: a published version to test.")],
    mode: Annotated[str | None, typer.Option(help="ab or shadow; default the config's.")] = None,
    share: Annotated[
        float | None, typer.Option(help="Challenger's share in percent, in (0, 100).")
    ] = None,
    metric: Annotated[str | None, typer.Option(help="Success metric of the family.")] = None,
    min_days: Annotated[int | None, typer.Option(help="No success before this many days.")] = None,
    max_days: Annotated[int | None, typer.Option(help="Ends undecided after this.")] = None,
    min_samples: Annotated[int | None, typer.Option(help="Labelled per arm, at least.")] = None,
    max_samples: Annotated[int | None, typer.Option(help="Ends undecided after this.")] = None,
) -> None:
    """Serve CHALLENGER beside the champion (shadow copy or A/B split) and capture both arms."""
    prepare_environment()
    from core.experiment import ExperimentError

    prefect_server.start()  # the embedded API starts while the flows import
    from flows.experiment import start as start_flow

    overrides = {
        "mode": mode,
        "share_percent": share,
        "metric": metric,
        "min_days": min_days,
        "max_days": max_days,
        "min_samples": min_samples,
        "max_samples": max_samples,
    }
    try:
        with embedded_prefect():
            state = start_flow(model, challenger, return_state=True, **overrides)
            state.result(raise_on_failure=False)
            if state.is_failed():
                exc = state.result(raise_on_failure=False)
                if isinstance(exc, ExperimentError):
                    raise exc
    except ExperimentError as exc:
        console.print(f"[red]refused[/]: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    finish(state)


@app.command()
def stop(
    model: Model,
    reason: Annotated[str, typer.Option(help="Recorded in the experiment.")] = "stopped by hand",
) -> None:
    """End MODEL's experiment: the champion answers every request again."""
    prepare_environment()
    prefect_server.start()  # the embedded API starts while the flows import
    from flows.experiment import stop as stop_flow

    with embedded_prefect():
        finish(stop_flow(model, reason, return_state=True))


def status_report(model: str) -> dict[str, Any]:
    """The record, its last look and what the endpoint does (also for tests and notebooks)."""
    from adapters.endpoints import open_target
    from adapters.store import store_from_settings
    from core.config import load_platform_config
    from core.settings import load_settings
    from tasks.experiment import experiment_status

    settings = load_settings()
    target = open_target(settings, load_platform_config(settings.config_dir))
    return experiment_status(store_from_settings(settings), target, model)


@app.command()
def status(
    model: Model,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per arm: requests, labelled samples, metric with CI, p-value or decision, planned n."""
    prepare_environment()
    from tasks.experiment import look_markdown

    report = status_report(model)
    exp = report["experiment"]
    if as_json:
        out = {**report, "experiment": exp and exp.to_dict()}
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        return
    if exp is None:
        console.print(f"{model}: no experiment")
        return
    console.print(f"{exp.id}: [bold]{exp.state}[/]", highlight=False)
    if report["note"]:
        console.print(f"[red]{report['note']}[/]", highlight=False, soft_wrap=True)
    if report["traffic"]:
        console.print(f"endpoint traffic: {json.dumps(report['traffic'], default=str)}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    if exp.looks:
        console.print(look_markdown(exp, exp.looks[-1]), highlight=False, soft_wrap=True)
    else:
        console.print("no look yet: the daily experiment/evaluate run makes the first")
    if exp.decision:
        console.print(f"decision: {exp.decision['verdict']}: {exp.decision['reason']}")
