"""``mlops store setup``: set up the bucket of an ``s3://`` store, idempotently.

The command reads everything first (whose bucket it is, each setting), prints the plan, and
only then writes; a second run prints that nothing changes and writes nothing. What it sets and
why each lifecycle rule leaves everything in use alone: ``docs/aws-account.md``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The model store's bucket.")


@app.command()
def setup(
    store: Annotated[
        str | None,
        typer.Option(help="s3://bucket/prefix (default MLOPS_STORE_URI)."),
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Region of a bucket to create (default the configured).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan; change nothing.")] = False,
) -> None:
    """Create the store's bucket if missing and set it up; a second run changes nothing.

    Versioning, default encryption, public access block, a TLS-only policy and lifecycle rules
    whose days come from the store: section of configs/platform.yaml.
    """
    from adapters.bucket import BucketError, StoreBucket
    from core.bucket_plan import BucketScope, bucket_kms_key, check_capture_retention, plan_setup
    from core.config import load_model_configs, load_platform_config
    from core.settings import load_settings

    settings = load_settings()
    uri = store or settings.store
    if not uri.startswith("s3://"):
        console.print(f"the store is a local directory ({uri}): no bucket to set up")
        return
    platform = load_platform_config(settings.config_dir)
    models = load_model_configs(settings.config_dir)
    # Refused before anything is read or written: a retention an experiment could outlive.
    check_capture_retention(
        platform.store.retention, {m.name: m.experiment.max_days for m in models}
    )
    scope = BucketScope.for_uri(
        uri,
        region=region or settings.aws_region,
        kms_key_id=bucket_kms_key(platform.store.kms_key_id, settings.kms_key_id),
        retention=platform.store.retention,
        project_tag=platform.project_tag,
    )
    bucket = StoreBucket.from_clients_of(
        scope, profile=settings.aws_profile, endpoint_url=settings.aws_endpoint_url
    )
    try:
        changes = plan_setup(bucket.read(), scope)
        if not changes:
            console.print(f"bucket {scope.bucket} is set up for {uri}: nothing to change")
            return
        title = "would change" if dry_run else "changing"
        console.print(f"[bold]bucket {scope.bucket}[/] ({uri}): {title}", highlight=False)
        for change in changes:
            console.print(f"  {change.summary}", highlight=False, soft_wrap=True)
        if dry_run:
            console.print("dry run: nothing was changed; run without --dry-run to apply")
            return
        bucket.apply(changes)
    except BucketError as exc:
        console.print(f"[red]refused[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"[green]done[/]: {len(changes)} change(s); a second run changes nothing")
