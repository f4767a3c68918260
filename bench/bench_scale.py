"""Scale benchmark: the retrain against the bare script it replaces, at 1x, 10x and 50x the data.

``make bench`` runs this (and the serving benchmark). For each size it seeds a source database
(``seed_source(weeks=9, n_clients, n_services)``: 1x = 200 clients and 5 services, 10x = 2,000
and 100, 50x = 10,000 and 500) and measures, each part in a child process of its own so that
its peak RSS is its own (``os.wait4`` returns the child's ``ru_maxrss``):

* the export of each table against a plain ``pandas.read_sql`` of the same rows;
* validation (the model's GX suite) against the same checks written in plain pandas;
* the bare script per family: ``read_sql``, the same split, the family's own ``train`` and
  ``evaluate`` (the same model code), no Prefect, MLflow, validation or store: the floor;
* the full flow (``retrain``, embedded defaults, no endpoint, started as ``mlops retrain``
  starts it) per family, per stage (the Prefect task runs' own start and end times) and in
  total, wall clock from process start, in a home whose Prefect and MLflow databases exist
  (every weekly run after a home's first finds them; the migrations cost 10-20 s once);
* with no new data, ``mlops retrain`` as a user runs it, and ``--always-run`` (a flow run
  that finds nothing: the flow's fixed cost);
* the forecaster on the 10x (and 50x) services, serially and fanned out over a process pool.

It writes ``BENCHMARKS.md`` between its markers: ratios first (the machine is shared), then
seconds and peak RSS, the machine, library versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from measured_on import measured_on

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("abuse_detector", "limit_optimiser", "traffic_forecaster")
SIZES = {"1x": (200, 5), "10x": (2000, 100), "25x": (5000, 250), "50x": (10000, 500)}
# `make bench` (1x and 10x) and the long 50x run write sections of their own.
DEFAULT_SIZES = "1x,10x"


def scale_marks(sizes: str) -> tuple[str, str]:
    """The BENCHMARKS.md markers of the section a run over ``sizes`` writes."""
    name = "bench-scale" if sizes == DEFAULT_SIZES else f"bench-scale-{sizes.replace(',', '-')}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


RUNNERS_START = "<!-- bench-runners:start -->"
RUNNERS_END = "<!-- bench-runners:end -->"


# --- children: each prints one JSON line ------------------------------------------------------


def _cfg(model: str) -> Any:
    from core.config import load_model_configs

    (cfg,) = load_model_configs(ROOT / "configs", [model])
    return cfg


def child_seed(url: str, clients: int, services: int) -> dict[str, Any]:
    """Seed the source at one size."""
    from adapters.source import seed_source

    return {"rows": seed_source(url, weeks=9, n_clients=clients, n_services=services)}


def child_read_sql(url: str, model: str) -> dict[str, Any]:
    """A plain ``pandas.read_sql`` of the rows the export reads."""
    import pandas as pd
    import sqlalchemy as sa

    cfg = _cfg(model)
    t0 = time.perf_counter()
    frame = pd.read_sql(sa.text(cfg.dataset.query), sa.create_engine(url))
    return {"seconds": time.perf_counter() - t0, "rows": len(frame)}


def child_export(url: str, model: str, store_dir: str) -> dict[str, Any]:
    """The project's export (streamed into Parquet parts) into a local store."""
    from adapters.store import LocalStore
    from core.settings import Settings
    from tasks.export import export_snapshot

    cfg, defaults = _cfg(model), Settings()
    t0 = time.perf_counter()
    info = export_snapshot(
        url,
        LocalStore(store_dir),
        cfg.dataset,
        chunk_rows=defaults.export_chunk_rows,
        part_rows=defaults.part_rows,
    )
    return {"seconds": time.perf_counter() - t0, "rows": info.rows if info else 0}


def plain_checks(frame: Any, cfg: Any) -> list[str]:
    """The model's expectations written in plain pandas; the names of those that fail."""
    failed = []
    for exp in cfg.validation:
        k, name = exp.kwargs, exp.expectation
        if name == "expect_table_row_count_to_be_between":
            ok = k.get("min_value", 0) <= len(frame) <= k.get("max_value", len(frame))
        elif name == "expect_column_values_to_not_be_null":
            ok = not frame[k["column"]].isna().any()
        elif name == "expect_column_values_to_be_between":
            col = frame[k["column"]]
            ok = bool(
                (col >= k.get("min_value", col.min())).all()
                and (col <= k.get("max_value", col.max())).all()
            )
        elif name == "expect_compound_columns_to_be_unique":
            ok = not frame.duplicated(subset=k["column_list"]).any()
        elif name == "expect_column_values_to_be_unique":
            ok = frame[k["column"]].is_unique
        elif name == "expect_column_values_to_be_in_set":
            ok = bool(frame[k["column"]].isin(k["value_set"]).all())
        else:
            raise ValueError(f"no plain-pandas version of {name}")
        if not ok:
            failed.append(name)
    for column in cfg.dataset.columns:  # the suite's schema checks: every column not null
        if frame[column].isna().any():
            failed.append(f"not null {column}")
    return failed


def child_validate(model: str, store_dir: str) -> dict[str, Any]:
    """GX on the exported snapshot against the same checks in plain pandas (same frame)."""
    from adapters.snapshots import list_snapshots, read_snapshots
    from adapters.store import LocalStore
    from tasks.validate import validate_frame

    cfg, store = _cfg(model), LocalStore(store_dir)
    ids = [m["snapshot_id"] for m in list_snapshots(store, cfg.dataset.name)]
    frame = read_snapshots(store, cfg.dataset, ids)
    # The first call pays GX's import and its ephemeral context (once per flow process); the
    # second is what each further validation costs.
    t0 = time.perf_counter()
    report = validate_frame(frame, cfg, ids[-1])
    gx = time.perf_counter() - t0
    t0 = time.perf_counter()
    validate_frame(frame, cfg, ids[-1])
    gx_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    failed = plain_checks(frame, cfg)
    plain = time.perf_counter() - t0
    return {
        "gx": gx,
        "gx_warm": gx_warm,
        "plain": plain,
        "gx_ok": report.success,
        "plain_ok": not failed,
    }


def child_bare(url: str, model: str) -> dict[str, Any]:
    """The bare script: read_sql, split, the family's train and evaluate. Nothing else."""
    import pandas as pd
    import sqlalchemy as sa

    from core.families import get_family
    from tasks.training import split_window

    cfg = _cfg(model)
    t0 = time.perf_counter()
    frame = pd.read_sql(sa.text(cfg.dataset.query), sa.create_engine(url))
    for column, kind in cfg.dataset.columns.items():
        if kind == "timestamp":
            frame[column] = pd.to_datetime(frame[column])
    t1 = time.perf_counter()
    train, holdout, _, _ = split_window(frame, cfg)
    family = get_family(cfg.family)
    params = family.Params.model_validate(cfg.params)
    model_ = family.train(train, params, cfg.seed)
    t2 = time.perf_counter()
    metrics = family.evaluate(model_, holdout, train).metrics
    t3 = time.perf_counter()
    return {"read": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2, "metrics": metrics}


def child_flow(models: list[str]) -> dict[str, Any]:
    """The retrain flow in this process, as the command runs it; seconds per stage."""
    import asyncio

    from adapters import prefect_server

    prefect_server.start()  # as `mlops retrain` does: the API starts while the flow imports
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    from cli.common import embedded_prefect
    from flows.retrain import retrain

    async def stages() -> dict[str, float]:
        runs: list[Any] = []
        async with get_client() as client:  # the API returns at most 200 runs a page
            while page := await client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=started)),
                limit=200,
                offset=len(runs),
            ):
                runs += page
        out: dict[str, float] = {}
        for run in runs:
            if run.start_time and run.end_time:
                name = run.name.rsplit("-", 1)[0] if run.name[-1:].isdigit() else run.name
                out[name] = out.get(name, 0.0) + (run.end_time - run.start_time).total_seconds()
        return out

    with embedded_prefect():  # the stages are read before the API stops with the process
        started = datetime.now(UTC)
        state = retrain(models=models, reason="bench", return_state=True)
        summary = state.result(raise_on_failure=False)
        by_task = asyncio.run(stages())
    return {"status": {o["model"]: o["status"] for o in summary["models"]}, "stages": by_task}


def child_warm() -> dict[str, Any]:
    """Make a flow home as a week after its first finds it: Prefect's and MLflow's databases.

    The first run in a home migrates both (10-20 s here); every later weekly run finds them.
    """
    import asyncio

    import mlflow

    from core.settings import prepare_environment

    settings = prepare_environment()
    t0 = time.perf_counter()
    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())
    mlflow.MlflowClient(settings.tracking_uri).search_experiments()
    return {"seconds": time.perf_counter() - t0}


def child_forecast(url: str, serial: bool, workers: int) -> dict[str, Any]:
    """The forecaster's training (one Prophet per service) serially or over a process pool."""
    from contextlib import nullcontext

    from adapters import prefect_server

    if not serial:
        prefect_server.start()
    import pandas as pd
    import sqlalchemy as sa

    from cli.common import embedded_prefect
    from core.config import RunnerConfig
    from core.families import get_family
    from tasks.runners import runner_map
    from tasks.training import split_window

    cfg = _cfg("traffic_forecaster")
    frame = pd.read_sql(sa.text(cfg.dataset.query), sa.create_engine(url))
    frame["ts"] = pd.to_datetime(frame["ts"])
    train, _, _, _ = split_window(frame, cfg)
    family = get_family(cfg.family)
    # One Prophet fit per service: the fan-out's unit of work, without the backtest's folds.
    params = family.Params.model_validate(
        {**cfg.params, "candidates": ["prophet"], "backtest_folds": 0}
    )
    mapper = map if serial else runner_map(RunnerConfig(kind="process", max_workers=workers))
    # Fanned out, the parts are Prefect task runs: the API they report to is up before the
    # clock starts, as in a flow run (it was counted here, about 12 s, until 2026-12-02).
    with nullcontext() if serial else embedded_prefect():
        t0 = time.perf_counter()
        model = family.train(train, params, cfg.seed, mapper=mapper)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "services": len(model.models)}


CHILDREN = {
    "seed": child_seed,
    "read_sql": child_read_sql,
    "export": child_export,
    "validate": child_validate,
    "bare": child_bare,
    "flow": child_flow,
    "warm": child_warm,
    "forecast": child_forecast,
}


# --- the parent -------------------------------------------------------------------------------


def timed(label: str, cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (its last stdout line is JSON, or it is the CLI); ``wall`` s, ``rss_mb``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cmd, stdout=out, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed with exit code {proc.returncode}")
    if lines[-1].startswith("{"):
        last = json.loads(lines[-1])
    else:  # the CLI: its headline ("1 model(s): ...", "no flow run started: ...")
        said = [line.strip() for line in lines if re.search(r"model\(s\):|no flow run", line)]
        last = {"said": said[-1] if said else lines[-1].strip()}
    result: dict[str, Any] = {**last, "wall": wall, "rss_mb": usage.ru_maxrss / 1024}
    sys.stderr.write(f"bench-scale: {label} -> {json.dumps(result)}\n")
    return result


def run_child(job: str, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one child; its result plus ``wall`` seconds and ``rss_mb`` (its own peak RSS)."""
    cmd = [sys.executable, __file__, "--child", job, "--kwargs", json.dumps(kwargs)]
    return timed(f"{job} {json.dumps(kwargs)}", cmd, env)


def run_cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    """``mlops ARGS`` as a user runs it (the command installed beside this Python)."""
    return timed(
        f"cli {json.dumps(list(args))}", [str(Path(sys.executable).parent / "mlops"), *args], env
    )


def flow_env(home: Path, url: str) -> dict[str, str]:
    """The embedded defaults in ``home``, reading the bench's source, no endpoint."""
    return {
        "MLOPS_HOME": str(home),
        "MLOPS_DATABASE_URL": url,
        "MLOPS_ENDPOINT_TARGET": "none",
        "MLOPS_CONFIG_DIR": str(ROOT / "configs"),
        # One Prefect database for the bench's flow runs alone: the stages read back from it
        # must not include task runs of anything else running on the machine.
        "PREFECT_HOME": str(home.parent / "prefect"),
        # The ephemeral API's start took over Prefect's default wait on a loaded shared machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def measure_size(
    size: str, work: Path, families: list[str], forecast: bool, full: bool = True
) -> dict[str, Any]:
    """Every figure at one size (``full=False``: the export, ``read_sql`` and validation only)."""
    clients, services = SIZES[size]
    url = f"sqlite:///{work / f'source-{size}.db'}"
    out: dict[str, Any] = {"size": size, "clients": clients, "services": services}
    out["seed"] = run_child("seed", url=url, clients=clients, services=services)
    for model in FAMILIES:
        store = work / f"store-{size}-{model}"
        out[f"read_sql/{model}"] = run_child("read_sql", url=url, model=model)
        out[f"export/{model}"] = run_child("export", url=url, model=model, store_dir=str(store))
        out[f"validate/{model}"] = run_child("validate", model=model, store_dir=str(store))
    if not full:
        return out
    home = work
    for model in families:
        out[f"bare/{model}"] = run_child("bare", url=url, model=model)
        home = work / f"home-{size}-{model}"
        out[f"warm/{model}"] = run_child("warm", flow_env(home, url))
        out[f"flow/{model}"] = run_child("flow", flow_env(home, url), models=[model])
    if families:
        # Nothing new since the last flow: the command's answer, then a flow run forced anyway
        # (its fixed cost: imports, the embedded Prefect API, the per-model checks).
        last = ["-m", families[-1]]
        out["cli/idle"] = run_cli(flow_env(home, url), "retrain", *last)
        out["cli/always"] = run_cli(flow_env(home, url), "retrain", "--always-run", *last)
    if forecast and services >= 100:
        out["forecast/serial"] = run_child("forecast", url=url, serial=True, workers=1)
        out["forecast/fanned"] = run_child("forecast", url=url, serial=False, workers=2)
    return out


def runner_configs(work: Path, kind: str) -> Path:
    """A copy of ``configs/`` whose ``runner:`` is ``kind`` (the rest as shipped)."""
    dest = work / f"configs-{kind}"
    if not dest.exists():
        shutil.copytree(ROOT / "configs", dest)
        platform_yaml = dest / "platform.yaml"
        text = platform_yaml.read_text()
        if "kind: threads " not in text:
            raise RuntimeError("configs/platform.yaml no longer says 'kind: threads'")
        platform_yaml.write_text(text.replace("kind: threads ", f"kind: {kind} ", 1))
    return dest


def measure_runners(work: Path, kinds: list[str], rounds: int) -> dict[str, Any]:
    """``make run``'s retrain (all three models, 1x, no endpoint) under each runner.

    Each round runs every runner once, in turn, on a fresh home over the same source, so a
    change in the machine's load falls on all of them alike; the figure is the median round.
    """
    clients, services = SIZES["1x"]
    url = f"sqlite:///{work / 'source-runners.db'}"
    run_child("seed", url=url, clients=clients, services=services)
    out: dict[str, Any] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind in kinds:
            env = flow_env(work / f"home-runners-{kind}-{round_}", url)
            env["MLOPS_CONFIG_DIR"] = str(runner_configs(work, kind))
            out[kind].append(run_child("flow", env, models=list(FAMILIES)))
    return out


def render_runners(meta: dict[str, str], runs: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of :func:`measure_runners`."""
    import statistics

    medians = {kind: statistics.median(r["wall"] for r in rounds) for kind, rounds in runs.items()}
    base = medians.get("threads") or min(medians.values())
    lines = [
        "## The retrain under each task runner (`bench_scale.py --runners`)",
        "",
        f"`make run`'s retrain of all three models on the 1x source (200 clients, 5 services), "
        f"no endpoint, each run a fresh home and process; runners alternate, median of "
        f"{len(next(iter(runs.values())))} rounds. Measured {meta['date']} on {meta['cpu']}, "
        f"load {meta['load']}, Python {meta['python']}; {meta['versions']}.",
        "",
        "| runner | wall s (median) | ÷ threads | every round's wall s | peak RSS MB of the flow's process | statuses |",  # noqa: E501
        "|---|---|---|---|---|---|",
    ]
    for kind, rounds in runs.items():
        walls = ", ".join(f"{r['wall']:.1f}" for r in rounds)
        rss = max(r["rss_mb"] for r in rounds)
        statuses = sorted({s for r in rounds for s in r["status"].values()})
        lines.append(
            f"| {kind} | {medians[kind]:.1f} | {_r(medians[kind], base)} | {walls} | "
            f"{rss:.0f} | {', '.join(statuses)} |"
        )
    return "\n".join(lines) + "\n"


def sizes_from_log(path: Path) -> list[dict[str, Any]]:
    """Rebuild the figures of a run (complete or cut short) from its ``bench-scale:`` lines."""
    sizes: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if not line.startswith("bench-scale: "):
            continue
        head, result = line.removeprefix("bench-scale: ").split(" -> ", 1)
        job, kwargs = head.split(" ", 1)
        args, res = json.loads(kwargs), json.loads(result)
        if job == "seed":
            size = next(k for k, v in SIZES.items() if v == (args["clients"], args["services"]))
            sizes.append({"size": size, "clients": args["clients"], "services": args["services"]})
            key = "seed"
        elif job == "flow":
            key = f"flow/{args['models'][0]}"
        elif job == "warm":
            continue
        elif job == "cli":
            key = "cli/always" if "--always-run" in args else "cli/idle"
        elif job == "forecast":
            key = "forecast/serial" if args["serial"] else "forecast/fanned"
        else:
            key = f"{job}/{args['model']}"
        sizes[-1][key] = res
    return sizes


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import pandas
    import prefect
    import prophet
    import sklearn
    import xgboost

    return {
        **measured_on(),
        "versions": f"prefect {prefect.__version__}, pandas {pandas.__version__}, "
        f"scikit-learn {sklearn.__version__}, xgboost {xgboost.__version__}, "
        f"prophet {prophet.__version__}",
    }


def _stages(stages: dict[str, float], model: str) -> list[tuple[str, float]]:
    """Task-run seconds by task name, longest first.

    A name's runs are summed (fan-out parts), Prefect's run-name suffix is dropped, and the
    wrappers that span the whole model are left out.
    """
    summed: dict[str, float] = {}
    for name, seconds in stages.items():
        base = re.sub(r"-[0-9a-f]{3}$", "", name)
        if base != f"run-{model}" and not base.startswith("retrain-model"):
            summed[base] = summed.get(base, 0.0) + seconds
    return sorted(summed.items(), key=lambda kv: -kv[1])


def _r(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def render(meta: dict[str, str], sizes: list[dict[str, Any]], command: str) -> str:
    """The BENCHMARKS.md section of a run of ``command``."""
    names = ", ".join(s["size"] for s in sizes)
    lines = [
        f"## Scale: the retrain against the bare script, {names} ({meta['date']})",
        "",
        f"`{command}` (`bench/bench_scale.py`). {meta['cpu']}; load average at the end "
        f"{meta['load']} (other jobs shared the cores); Python {meta['python']}; "
        f"{meta['versions']}.",
        "Each figure is its own child process; RSS is that process's peak. Flow = `retrain` on "
        "the embedded defaults (no endpoint), as `mlops retrain` runs it, wall clock from "
        "process start to exit, in a home whose Prefect and MLflow databases exist (a weekly "
        "run after the home's first).",
        "",
        "| size | part | model | ratio | measured | against |",
        "|---|---|---|---|---|---|",
    ]
    for s in sizes:
        tag = f"{s['size']} ({s['clients']} clients, {s['services']} services)"
        for model in FAMILIES:
            if f"export/{model}" not in s:  # a run cut short (--from-log)
                continue
            rs, ex = s[f"read_sql/{model}"], s[f"export/{model}"]
            lines.append(
                f"| {tag} | export ÷ read_sql (speed-up) | {model} "
                f"| {_r(rs['seconds'], ex['seconds'])} "
                f"| {ex['seconds']:.1f} s, {ex['rss_mb']:.0f} MB, {ex['rows']:,} rows "
                f"| {rs['seconds']:.1f} s, {rs['rss_mb']:.0f} MB |"
            )
            va = s.get(f"validate/{model}")
            if va is None:
                continue
            lines.append(
                f"| {tag} | validation GX ÷ pandas | {model} | {_r(va['gx'], va['plain'])} "
                f"| {va['gx']:.2f} s (ok {va['gx_ok']}) "
                f"| {va['plain']:.3f} s (ok {va['plain_ok']}) |"
            )
            if "gx_warm" in va:
                lines.append(
                    f"| {tag} | validation GX ÷ pandas, GX loaded | {model} "
                    f"| {_r(va['gx_warm'], va['plain'])} | {va['gx_warm']:.2f} s "
                    f"| {va['plain']:.3f} s |"
                )
        for key in [k for k in s if k.startswith("flow/")]:
            model = key.split("/", 1)[1]
            if f"bare/{model}" not in s:
                continue
            fl, ba = s[key], s[f"bare/{model}"]
            stages = ", ".join(
                f"{name} {sec:.1f}" for name, sec in _stages(fl["stages"], model) if sec >= 0.1
            )
            lines.append(
                f"| {tag} | flow ÷ bare (time) | {model} | {_r(fl['wall'], ba['wall'])} "
                f"| {fl['wall']:.1f} s ({fl['status'].get(model)}; stages s: {stages}) "
                f"| {ba['wall']:.1f} s (read {ba['read']:.1f}, train {ba['train']:.1f}, "
                f"evaluate {ba['evaluate']:.1f}) |"
            )
            lines.append(
                f"| {tag} | flow ÷ bare (peak RSS) | {model} | {_r(fl['rss_mb'], ba['rss_mb'])} "
                f"| {fl['rss_mb']:.0f} MB | {ba['rss_mb']:.0f} MB |"
            )
        if "cli/idle" in s and "cli/always" in s:
            idle, always = s["cli/idle"], s["cli/always"]
            lines.append(
                f"| {tag} | no new data: `mlops retrain` | | | {idle['wall']:.1f} s, "
                f"{idle['rss_mb']:.0f} MB | `--always-run` (a flow run that finds nothing): "
                f"{always['wall']:.1f} s, {always['rss_mb']:.0f} MB |"
            )
        if "forecast/serial" in s and "forecast/fanned" in s:
            se, fa = s["forecast/serial"], s["forecast/fanned"]
            lines.append(
                f"| {tag} | forecaster serial ÷ fanned out (2 processes) | traffic_forecaster "
                f"| {_r(se['seconds'], fa['seconds'])} | {fa['seconds']:.1f} s "
                f"({fa['services']} services) | {se['seconds']:.1f} s |"
            )
    if len(sizes) > 1:
        lo, hi = sizes[-2], sizes[-1]
        for model in [f for f in FAMILIES if f"export/{f}" in lo and f"export/{f}" in hi]:
            a, b = lo[f"export/{model}"]["rss_mb"], hi[f"export/{model}"]["rss_mb"]
            lines.append(
                f"| {hi['size']} ÷ {lo['size']} | export peak RSS | {model} | {_r(b, a)} "
                f"| {b:.0f} MB | {a:.0f} MB |"
            )
    return "\n".join(lines) + "\n"


def write_section(section: str, start: str, end: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (other sections are kept)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{section}{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main() -> int:
    """Parse the options; run a child, or the whole benchmark and write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help="Comma-separated, in order: 1x,10x,25x,50x."
    )
    parser.add_argument(
        "--export-only",
        default="",
        help="Sizes (of --sizes) measured for the export, read_sql and validation only.",
    )
    parser.add_argument(
        "--flow-models", default=",".join(FAMILIES), help="Families run as flow and bare script."
    )
    parser.add_argument("--no-forecast", action="store_true", help="Skip serial vs fanned out.")
    parser.add_argument("--json", help="Also write every figure here.")
    parser.add_argument(
        "--runners", help="Only the retrain under these runners (threads,process,dask) at 1x."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of --runners.")
    parser.add_argument(
        "--from-log", help="Write BENCHMARKS.md from a run's stderr (its bench-scale: lines)."
    )
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](**json.loads(args.kwargs))
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return 0
    marks = scale_marks(args.sizes)
    command = {DEFAULT_SIZES: "make bench", "10x,50x": "make bench-scale-50x"}.get(
        args.sizes, f"bench_scale.py --sizes {args.sizes}"
    )
    if args.from_log:
        sizes = sizes_from_log(Path(args.from_log))
        write_section(render(machine(), sizes, command), *marks)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    if args.runners:
        try:
            runs = measure_runners(work, args.runners.split(","), args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_section(render_runners(machine(), runs), RUNNERS_START, RUNNERS_END)
        return 0
    try:
        partial = set(filter(None, args.export_only.split(",")))
        sizes = [
            measure_size(
                size,
                work,
                [m for m in args.flow_models.split(",") if m],
                not args.no_forecast,
                full=size not in partial,
            )
            for size in args.sizes.split(",")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(sizes, indent=1, default=str))
    write_section(render(machine(), sizes, command), *marks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
