"""Config files are code: the shipped ones load, and bad ones fail naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_model_config, load_model_configs, load_platform_config
from core.settings import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"
SHIPPED = sorted((CONFIG_DIR / "models").glob("*.yaml"))


def test_three_models_ship() -> None:
    assert [p.stem for p in SHIPPED] == ["abuse_detector", "limit_optimiser", "traffic_forecaster"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_model_config(path)
    assert cfg.name == path.stem
    # Every expectation says why it exists (the house rule for suites).
    assert all(len(e.why) >= 10 for e in cfg.validation)
    # Every gated metric has a floor: a first model is judged by floors alone.
    assert all(rule.floor is not None for rule in cfg.gate.metrics.values())


def test_config_hash_is_stable_and_sensitive() -> None:
    a = load_model_config(SHIPPED[0])
    b = load_model_config(SHIPPED[0])
    assert a.config_hash() == b.config_hash()
    changed = a.model_copy(update={"seed": a.seed + 1})
    assert changed.config_hash() != a.config_hash()


def _write(tmp_path: Path, mutate: object) -> Path:
    raw = yaml.safe_load(SHIPPED[0].read_text())
    mutate(raw)  # type: ignore[operator]
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "models" / f"{raw.get('name', 'x')}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(unknown_key=1), "unknown_key"),
        (lambda r: r["gate"]["metrics"]["roc_auc"].update(direction="up"), "direction"),
        (lambda r: r["dataset"]["columns"].pop("window_start"), "window_start"),
        (
            lambda r: r.update(
                validation=[e for e in r["validation"] if "row_count" not in e["expectation"]]
            ),
            "row_count",
        ),
        (
            lambda r: r["validation"].append(
                {
                    "expectation": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": "nope"},
                    "why": "a column that is not exported",
                }
            ),
            "nope",
        ),
        (lambda r: r["params"].update(n_estimators=-5), "n_estimators"),
        (lambda r: r["params"].update(learning_rate=0.1), "learning_rate"),
        (lambda r: r.update(family="no_such_family"), "no_such_family"),
        (lambda r: r["split"].update(holdout_days=0), "holdout_days"),
        (lambda r: r["endpoint"]["deployment"].update(type="big_bang"), "type"),
        (lambda r: r["endpoint"].update(instance_type="m5.large"), "instance_type"),
        (lambda r: r["endpoint"]["deployment"].update(canary_percent=80), "canary_percent"),
        (lambda r: r["endpoint"].update(serverless={"memory_mb": 1000}), "memory_mb"),
    ],
    ids=[
        "extra-key",
        "bad-direction",
        "missing-event-time",
        "no-row-count",
        "unknown-column",
        "bad-param",
        "param-of-other-family",
        "unknown-family",
        "zero-holdout",
        "unknown-deployment-type",
        "instance-type-without-ml-prefix",
        "canary-over-half",
        "serverless-memory-not-a-size",
    ],
)
def test_bad_configs_fail_naming_the_problem(tmp_path: Path, mutate: object, message: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message):
        load_model_config(path)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda r: None)
    other = path.with_name("renamed.yaml")
    path.rename(other)
    with pytest.raises(ConfigError, match="must match the file name"):
        load_model_config(other)


def test_unknown_model_name_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        load_model_configs(CONFIG_DIR, ["nope"])


def test_shipped_platform_config_loads_and_prices_every_configured_instance() -> None:
    platform = load_platform_config(CONFIG_DIR)
    assert platform.schedule.timezone and platform.retention.keep_last >= 1
    for cfg in load_model_configs(CONFIG_DIR):
        if cfg.endpoint.serverless is None:
            # A rollout prints the cost before it creates anything: the price must be known.
            assert cfg.endpoint.instance_type in platform.pricing.instance_hourly_usd


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retention: {keep_last: 0}", "keep_last"),
        ("monitor: {psi_threshold: -1}", "psi_threshold"),
        ("projet_tag: typo", "projet_tag"),
        ("project_tag: Has_Upper", "project_tag"),
        ("schedule: [1, 2]", "schedule"),
        # The bucket's retention: a running training job must outlive its files' expiry.
        ("store: {retention: {training_jobs_days: 3}}", "training_jobs_days"),
        ("store: {retention: {noncurrent_versions_days: 0}}", "noncurrent_versions_days"),
        ("store: {retention: {captured_requests_days: 99999}}", "captured_requests_days"),
        ("store: {kms_key_id: not-a-key}", "kms_key_id"),
        ("store: {retension: {}}", "retension"),
    ],
)
def test_bad_platform_config_fails_naming_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "platform.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_platform_config(tmp_path)


def test_platform_config_defaults_when_absent(tmp_path: Path) -> None:
    assert load_platform_config(tmp_path).project_tag == "intelli-rate"


def test_mlflow_artifacts_go_to_the_home_only_with_the_embedded_store(
    mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import load_settings

    assert load_settings().mlflow_artifact_root == (mlops_home / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlops_home}/other.db")
    assert load_settings().mlflow_artifact_root == (mlops_home / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert load_settings().mlflow_artifact_root is None


def test_endpoint_alarms_load_in_the_old_list_form_and_the_new_mapping(tmp_path: Path) -> None:
    """``alarms: [names]`` was the whole setting before thresholds: such a config still loads."""
    path = CONFIG_DIR / "models" / "limit_optimiser.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["endpoint"]["deployment"]["alarms"] = ["team-pager"]
    old = tmp_path / "limit_optimiser.yaml"
    old.write_text(yaml.safe_dump(raw))
    alarms = load_model_config(old).endpoint.deployment.alarms
    assert alarms.names == ["team-pager"]
    assert alarms.create and alarms.p99_latency_ms == 1000.0 and alarms.error_rate == 0.05
    shipped = load_model_config(path).endpoint.deployment.alarms
    assert shipped.create and shipped.p99_latency_ms == 500.0
    # SageMaker takes 10 rollback alarms, the project's own are 2: a ninth name is refused.
    raw["endpoint"]["deployment"]["alarms"] = {"names": [f"a{i}" for i in range(9)]}
    old.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="names"):
        load_model_config(old)
    raw["endpoint"]["deployment"]["alarms"] = {"p99_latency": 300}  # a typo names the key
    old.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="p99_latency"):
        load_model_config(old)


# --- endpoint instances, autoscaling and network (core.endpoint_config) ------------------------

VPC = {"subnets": ["subnet-0a1b2c3d"], "security_group_ids": ["sg-0123abcd"]}


def _no_scaling(endpoint: dict[str, object], **values: object) -> None:
    endpoint.pop("autoscaling", None)
    endpoint.update(values)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        # The bad input: a strategy that cannot use the instance count, refused at load.
        (
            lambda r: _no_scaling(r["endpoint"], instance_count=1),
            "deployment canary needs at least 2 instances, instance_count is 1: SageMaker shifts "
            "canary traffic in steps of the fleet's capacity",
        ),
        (
            lambda r: r["endpoint"]["autoscaling"].update(min_instances=1),
            "deployment canary needs at least 2 instances, autoscaling.min_instances is 1",
        ),
        (
            lambda r: (
                _no_scaling(r["endpoint"], instance_count=1),
                r["endpoint"]["deployment"].update(type="linear"),
            ),
            "deployment linear needs at least 2 instances, instance_count is 1",
        ),
        (
            lambda r: r["endpoint"].update(instance_count=12),
            r"instance_count 12 is outside autoscaling's \[2, 10\]",
        ),
        (
            lambda r: r["endpoint"]["autoscaling"].update(min_instances=11),
            "min_instances 11 is above max_instances 10",
        ),
        (
            lambda r: r["endpoint"]["autoscaling"].update(target_invocations_per_instance=0),
            "target_invocations_per_instance",
        ),
        (
            lambda r: r["endpoint"]["autoscaling"].update(scale_in_cooldown_seconds=-1),
            "scale_in_cooldown_seconds",
        ),
        (lambda r: r["endpoint"]["autoscaling"].update(step=3), "step"),
        (
            lambda r: (
                r["endpoint"].update(serverless={"memory_mb": 2048}),
                r["endpoint"]["deployment"].update(type="all_at_once"),
            ),
            "autoscaling is for instance endpoints: a serverless endpoint scales by itself",
        ),
        (
            lambda r: (
                _no_scaling(r["endpoint"], serverless={"memory_mb": 2048}, vpc=VPC),
                r["endpoint"]["deployment"].update(type="all_at_once"),
            ),
            "serverless endpoints do not run in a VPC",
        ),
        (
            lambda r: r["endpoint"].update(vpc={"subnets": ["subnet-0a1b2c3d"]}),
            "vpc has subnets but no security_group_ids: SageMaker's VpcConfig takes both",
        ),
        (
            lambda r: r["training"].update(vpc={"security_group_ids": ["sg-0123abcd"]}),
            "vpc has security_group_ids but no subnets",
        ),
        (
            lambda r: r["endpoint"].update(vpc={**VPC, "subnets": ["vpc-0a1b2c3d"]}),
            r"subnet id\(s\) \['vpc-0a1b2c3d'\] do not look like",
        ),
        (
            lambda r: r["endpoint"].update(vpc={**VPC, "security_group_ids": ["sg-xyz"]}),
            r"security group id\(s\) \['sg-xyz'\]",
        ),
    ],
    ids=[
        "canary-one-instance",
        "canary-scales-in-to-one",
        "linear-one-instance",
        "count-outside-bounds",
        "min-above-max",
        "zero-target",
        "negative-cooldown",
        "unknown-scaling-key",
        "serverless-autoscaling",
        "serverless-vpc",
        "vpc-without-groups",
        "training-vpc-without-subnets",
        "subnet-shape",
        "security-group-shape",
    ],
)
def test_bad_endpoint_configs_are_refused_with_the_reason(
    tmp_path: Path, mutate: object, message: str
) -> None:
    def prepared(raw: dict[str, object]) -> None:
        raw.setdefault("training", {})
        mutate(raw)  # type: ignore[operator]

    path = _write(tmp_path, prepared)
    with pytest.raises(ConfigError, match=message):
        load_model_config(path)


def test_one_instance_is_fine_all_at_once_and_the_shipped_strategies_have_two() -> None:
    cfg = load_model_config(SHIPPED[0])
    # all_at_once moves the whole fleet at once: one instance is a fleet it can move.
    one = cfg.endpoint.model_copy(update={"autoscaling": None, "instance_count": 1})
    type(cfg.endpoint).model_validate({**one.model_dump(), "deployment": {"type": "all_at_once"}})
    for path in SHIPPED:
        endpoint = load_model_config(path).endpoint
        if endpoint.deployment.type in ("canary", "linear"):
            assert endpoint.instance_count >= 2
            assert endpoint.autoscaling is not None and endpoint.autoscaling.min_instances >= 2


def test_vpc_and_isolation_load_from_model_and_platform(tmp_path: Path) -> None:
    def with_vpc(raw: dict[str, object]) -> None:
        raw["endpoint"]["vpc"] = VPC  # type: ignore[index]
        raw["training"] = {"vpc": VPC, "network_isolation": False}

    cfg = load_model_config(_write(tmp_path, with_vpc))
    assert cfg.endpoint.vpc is not None and cfg.endpoint.network_isolation is True
    assert cfg.endpoint.vpc.request() == {
        "SecurityGroupIds": ["sg-0123abcd"],
        "Subnets": ["subnet-0a1b2c3d"],
    }
    assert cfg.training.network_isolation is False
    (tmp_path / "platform.yaml").write_text(f"network: {{vpc: {VPC}}}")
    assert load_platform_config(tmp_path).network.vpc == cfg.endpoint.vpc
    (tmp_path / "platform.yaml").write_text("network: {vpc: {subnets: [subnet-0a1b2c3d]}}")
    with pytest.raises(ConfigError, match="no security_group_ids"):
        load_platform_config(tmp_path)
