"""The ``runner:`` section of platform.yaml and the Prefect task runner it builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from core.config import ConfigError, RunnerConfig, load_platform_config
from core.settings import PROJECT_ROOT
from tasks.runners import runner_map, task_runner
from tests.fixtures.prefect import run_without_server


def test_the_shipped_config_runs_on_threads() -> None:
    assert load_platform_config(PROJECT_ROOT / "configs").runner == RunnerConfig(
        kind="threads", max_workers=2, dask_address=""
    )


@pytest.mark.parametrize(
    "runner",
    ["kind: spark", "max_workers: 0", 'dask_address: "scheduler:8786"', "workers: 2"],
)
def test_a_bad_runner_section_is_an_error_naming_it(tmp_path: Path, runner: str) -> None:
    (tmp_path / "platform.yaml").write_text(f"runner:\n  {runner}\n")
    with pytest.raises(ConfigError, match="runner"):
        load_platform_config(tmp_path)


def test_each_kind_builds_prefects_runner() -> None:
    from prefect_dask import DaskTaskRunner

    threads = task_runner(RunnerConfig(kind="threads", max_workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    assert isinstance(task_runner(RunnerConfig(kind="process")), ProcessPoolTaskRunner)
    remote = task_runner(RunnerConfig(kind="dask", dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = task_runner(RunnerConfig(kind="dask", max_workers=4))
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 4
    assert local.cluster_kwargs["threads_per_worker"] == 1


def test_one_worker_or_one_item_maps_inline_in_order() -> None:
    # No runner (and no Prefect API) is needed when there is nothing to run at once.
    assert runner_map(RunnerConfig(max_workers=1))(str.upper, ["b", "a", "c"]) == ["B", "A", "C"]
    assert runner_map(RunnerConfig(max_workers=2))(str.upper, ["x"]) == ["X"]


def test_a_process_pool_reports_to_the_flows_api_and_fans_the_forecaster_out_exactly(
    tmp_path: Path,
) -> None:
    """``make run``'s case: no PREFECT_API_URL, so the flow's API is a temporary server.

    Each pool process used to start a temporary server of its own (15-30 s each) and record
    its task runs there, unseen; now every part reports to the flow's server, the only one
    started. The forecaster's services fanned out save to the serial model's bytes.
    """
    found, stderr = run_without_server(tmp_path, "tests.fixtures.fanout", "process")
    assert found["part_apis"] == [found["flow_api"]], found
    assert stderr.count("Starting temporary server") == 1, stderr[-3000:]
    assert found["fanned"] == found["serial"]
