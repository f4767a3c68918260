"""``mlops seed``: create or extend the source database (synthetic, drifted or corrupt rows)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import app, console
from core.settings import prepare_environment


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
    clients: Annotated[
        int,
        typer.Option(
            "--clients", min=1, max=100_000, help="Clients in client_windows and client_limits."
        ),
    ] = 200,
    services: Annotated[
        int, typer.Option("--services", min=1, max=10_000, help="Services in service_traffic.")
    ] = 5,
    corrupt: Annotated[
        str | None, typer.Option(help="Append rows that break this table's expectations.")
    ] = None,
    if_empty: Annotated[bool, typer.Option(help="Do nothing when the database has data.")] = False,
) -> None:
    """Create the source database, or extend it by a week (drifted on request).

    ``--clients`` and ``--services`` size the synthetic population (2,000 and 100 are ten times
    the defaults). The same seed gives the same first N clients at any size, so appending with
    a larger size adds new clients beside the old ones rather than renaming them.
    """
    settings = prepare_environment()
    from adapters.source import corrupt_source, mask_url, seed_source, source_has_data

    url = settings.source_url
    if corrupt:
        counts = corrupt_source(url, corrupt)
        console.print(f"[red]appended bad rows to {corrupt}[/]: {counts}")
        return
    if if_empty and source_has_data(url):
        console.print(f"source database already has data: {mask_url(url)}")
        return
    with console.status("generating source data...") as status:
        counts = seed_source(
            url,
            weeks=weeks,
            append_weeks=append_weeks,
            drift=drift,
            seed=seed_value,
            n_clients=clients,
            n_services=services,
            progress=lambda msg: status.update(msg),
        )
    for table, rows in counts.items():
        console.print(f"  {table}: +{rows} rows")
    console.print(f"source database: {mask_url(url)}")
