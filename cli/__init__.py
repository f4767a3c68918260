"""``mlops``: a thin command line over the flows and tasks.

    mlops seed [--weeks N] [--append-weeks N] [--drift X] [--corrupt TABLE] [--if-empty]
    mlops retrain [--model NAME ...] [--force] [--always-run] [--reason TEXT]
    mlops status [--model NAME ...] [--json]
    mlops rollout MODEL [--version vN]
    mlops rollback MODEL [--to vN]
    mlops endpoint status|stop|start
    mlops cleanup [--apply] [--yes] [--all] [--clean-s3] [--region R]
    mlops monitor [--model NAME ...] [--trigger/--no-trigger]
    mlops experiment start MODEL --challenger vN [--mode ab|shadow] [--share P] [--metric M] ...
    mlops experiment status|stop MODEL
    mlops feedback import FILE --model MODEL
    mlops store setup [--store s3://bucket/prefix] [--region R] [--dry-run]

Prefect's embedded state is pointed at ``$MLOPS_HOME`` before Prefect is imported, so the
imports of flows and tasks happen inside the commands.
"""

from cli import data, endpoint, experiment, feedback, models, monitor, status, store
from cli.common import app, console

app.add_typer(endpoint.app, name="endpoint")
app.add_typer(experiment.app, name="experiment")
app.add_typer(feedback.app, name="feedback")
app.add_typer(store.app, name="store")
__all__ = ["app", "data", "experiment", "feedback", "main", "models", "monitor", "status", "store"]


def main() -> None:
    """Entry point of the ``mlops`` command.

    A configuration mistake (a missing config directory, an unknown gate metric or setting)
    ends with its one-line message and exit code 2, before anything ran.
    """
    from adapters.store_errors import BucketNotReady
    from core.config import ConfigError
    from core.settings import SettingsError

    try:
        app()
    except (ConfigError, SettingsError) as exc:
        console.print(f"[red]configuration error[/]: {exc}", soft_wrap=True)
        raise SystemExit(2) from None
    except BucketNotReady as exc:  # the store's bucket needs `mlops store setup` first
        console.print(f"[red]store not set up[/]: {exc}", soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
