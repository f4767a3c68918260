"""``mlops feedback import FILE --model M``: outcomes reported in bulk (README "Experiments").

The file is CSV with a header (``inference_id,outcome``) or JSON lines
(``{"inference_id": "...", "outcome": 250}``), one outcome per answer. Each is recorded as the
router's ``POST /feedback/{model}`` records one (:mod:`serving.feedback`), once per inference
id; an id that no captured answer of the model has, a duplicate (in the file or already
recorded) and a malformed line are refused, each listed with its reason. Exit code 0 when
everything was recorded, 1 when something was refused, 2 when the file cannot be read.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import console
from core.settings import prepare_environment

app = typer.Typer(no_args_is_help=True, help="Outcomes reported after a decision.")


def import_report(path: Path, model: str) -> dict[str, Any]:
    """Record the outcomes of ``path`` for ``model``; what was recorded and refused, and why.

    Raises:
        ValueError: the suffix is neither CSV nor JSON lines.
        OSError: the file cannot be read.
    """
    from adapters.endpoints import open_target
    from adapters.feedback import captured_ids, import_outcomes
    from adapters.layout import capture_prefix, timestamp
    from adapters.store import store_from_settings
    from core.config import load_platform_config
    from core.feedback import file_format, parse_import
    from core.settings import load_settings

    read = parse_import(path.read_text(encoding="utf-8"), file_format(path.name))
    settings = load_settings()
    store = store_from_settings(settings)
    target = open_target(settings, load_platform_config(settings.config_dir))
    prefix = target.capture_prefix(model) if target else store.url(capture_prefix(model))
    at = timestamp(datetime.now(UTC))
    result = import_outcomes(store, model, read.outcomes, captured_ids(store, prefix), at)
    refused = [{"line": n, "reason": why} for n, why in read.problems]
    refused += [{"inference_id": i, "reason": why} for i, why in result.refused]
    return {"model": model, "recorded": result.recorded, "refused": refused}


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV (.csv) or JSON lines (.jsonl) of outcomes.")],
    model: Annotated[str, typer.Option(help="The model whose answers the outcomes are about.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Record FILE's outcomes (inference_id, outcome) beside the source table's labels."""
    prepare_environment()
    try:
        report = import_report(file, model)
    except (ValueError, OSError) as exc:
        console.print(f"[red]cannot import[/]: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        console.print(f"{model}: {report['recorded']} outcome(s) recorded, "
                      f"{len(report['refused'])} refused", highlight=False)  # fmt: skip
        for item in report["refused"]:
            where = f"line {item['line']}" if "line" in item else item["inference_id"]
            console.print(f"  {where}: {item['reason']}", highlight=False, soft_wrap=True)
    if report["refused"]:
        raise typer.Exit(1)
