"""The three model families behind one interface: train, evaluate, save/load, predict, log.

Each family is trained once per module on a tiny deterministic frame built here (same columns
and types as the family's ``dataset.columns``), where the signal is planted on purpose: a model
that learned anything scores clearly better than chance, one that learned nothing does not.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from adapters.registry import Registry
from core.families import Family, get_family, json_records
from core.settings import PROJECT_ROOT

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["abuse_detector", "limit_optimiser", "traffic_forecaster"]
SEED = 7

# --- tiny deterministic data ----------------------------------------------------------------


def client_windows(n_clients: int = 16, hours: int = 96, seed: int = 0) -> pd.DataFrame:
    """Hourly client windows; about 4 % are abusive, with three kinds of incident.

    Normal windows: ~100 requests, few logins, low error rates. Incidents push different
    columns far out: bursts (requests, kb_out), credential stuffing (logins, failures, IPs),
    scraping (unique paths, kb_out). So an isolation forest can find them; the labels say where.
    """
    rng = np.random.default_rng(seed)
    n = n_clients * hours
    start = pd.Timestamp("2025-03-03")
    requests = rng.poisson(100, n)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype="int64"),
            "client_id": np.repeat([f"client-{i:03d}" for i in range(n_clients)], hours),
            "window_start": np.tile(pd.date_range(start, periods=hours, freq="h"), n_clients),
            "requests": requests,
            "error_rate": rng.beta(1, 60, n),
            "unique_paths": rng.poisson(8, n),
            "unique_ips": rng.poisson(1, n) + 1,
            "login_attempts": rng.poisson(1, n),
            "failed_login_rate": rng.beta(1, 30, n),
            "kb_out": requests * rng.gamma(8.0, 1.0, n),
            "mean_interarrival_ms": 3.6e6 / np.maximum(requests, 1),
            "is_abuse": np.zeros(n, dtype="int64"),
            "incident_type": "none",
        }
    )
    kinds = rng.choice(["burst", "credential_stuffing", "scraping"], n)
    abusive = rng.random(n) < 0.04
    for kind in ("burst", "credential_stuffing", "scraping"):
        rows = abusive & (kinds == kind)
        if kind == "burst":
            frame.loc[rows, "requests"] *= 30
            frame.loc[rows, "kb_out"] *= 30
            frame.loc[rows, "mean_interarrival_ms"] /= 30
        elif kind == "credential_stuffing":
            frame.loc[rows, "login_attempts"] += 300
            frame.loc[rows, "failed_login_rate"] = 0.95
            frame.loc[rows, "unique_ips"] += 40
        else:
            frame.loc[rows, "unique_paths"] += 400
            frame.loc[rows, "kb_out"] *= 10
        frame.loc[rows, "is_abuse"] = 1
        frame.loc[rows, "incident_type"] = kind
    return frame


def client_limits(n_clients: int = 40, days: int = 14, seed: int = 0) -> pd.DataFrame:
    """Daily client features; the best limit is the p99 rate times a per-tier headroom."""
    rng = np.random.default_rng(seed)
    n = n_clients * days
    tier_of = rng.choice(["free", "pro", "enterprise"], n_clients)
    tier = np.repeat(tier_of, days)
    headroom = pd.Series(tier).map({"free": 1.2, "pro": 1.6, "enterprise": 2.2}).to_numpy()
    avg = np.repeat(rng.lognormal(1.0, 1.0, n_clients), days) * rng.lognormal(0.0, 0.2, n)
    p95 = avg * rng.uniform(1.5, 2.5, n)
    p99 = p95 * rng.uniform(1.1, 1.5, n)
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype="int64"),
            "client_id": np.repeat([f"client-{i:03d}" for i in range(n_clients)], days),
            "day": np.tile(pd.date_range("2025-03-03", periods=days, freq="D"), n_clients),
            "tier": tier,
            "avg_rps": avg,
            "p95_rps": p95,
            "p99_rps": p99,
            "burst_ratio": p99 / avg,
            "error_rate": rng.beta(1, 60, n),
            "account_age_days": np.repeat(rng.integers(1, 1500, n_clients), days),
            "endpoints_used": rng.integers(1, 40, n),
            "best_limit": p99 * headroom * rng.lognormal(0.0, 0.05, n),
        }
    )


def service_traffic(
    services: tuple[str, ...] = ("api", "auth"),
    days: int = 21,
    holidays: tuple[str, ...] = ("2025-03-05", "2025-03-19"),
    seed: int = 0,
) -> pd.DataFrame:
    """Hourly requests per service: a daily wave, quiet weekends, holidays at half traffic."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2025-03-03", periods=24 * days, freq="h")  # a Monday
    hour, weekday = ts.hour.to_numpy(), ts.dayofweek.to_numpy()
    holiday = ts.normalize().isin(pd.to_datetime(list(holidays))).astype("int64")
    frames = []
    for i, service in enumerate(services):
        level = 800.0 * (i + 1) * (1 + 0.6 * np.sin(2 * np.pi * (hour - 8) / 24))
        level *= np.where(weekday >= 5, 0.55, 1.0) * np.where(holiday == 1, 0.5, 1.0)
        noisy = level * rng.lognormal(0.0, 0.08, len(ts))
        frames.append(
            pd.DataFrame(
                {
                    "service": service,
                    "ts": ts,
                    "requests": np.round(noisy).astype("int64"),
                    "is_holiday": holiday,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype="int64"))
    return frame


@dataclass
class Case:
    """One family with its data split and small, fast hyperparameters."""

    family: Family
    train: pd.DataFrame
    holdout: pd.DataFrame
    params: Any


def split(frame: pd.DataFrame, column: str, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    cutoff = frame[column].max().normalize() - pd.Timedelta(days=days - 1)
    return (
        frame[frame[column] < cutoff].reset_index(drop=True),
        frame[frame[column] >= cutoff].reset_index(drop=True),
    )


def build_case(name: str) -> Case:
    family = get_family(name)
    if name == "abuse_detector":
        train, holdout = split(client_windows(), "window_start", 1)
        params = family.Params(
            n_estimators=60, max_samples=256, contamination=0.04, top_fraction=0.03
        )
    elif name == "limit_optimiser":
        train, holdout = split(client_limits(), "day", 3)
        params = family.Params(n_estimators=80, max_depth=4, learning_rate=0.2, n_jobs=1)
    else:
        train, holdout = split(service_traffic(), "ts", 7)
        params = family.Params(backtest_folds=1, backtest_horizon_hours=48)
    return Case(family, train, holdout, params)


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: build_case(name) for name in FAMILIES}


@pytest.fixture(scope="module")
def models(cases: dict[str, Case]) -> dict[str, Any]:
    return {n: c.family.train(c.train, c.params, SEED) for n, c in cases.items()}


def config_params(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / "models" / f"{name}.yaml").read_text())["params"]


# --- Params: strict, bounded, in step with the config files ---------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_found_by_name_and_params_match_its_config(name: str) -> None:
    family = get_family(name)
    assert family.name == name
    params = config_params(name)
    # The config's params block and the model must list the same keys: no silent defaults.
    assert set(family.Params.model_fields) == set(params)
    assert family.Params.model_validate(params).model_dump() == params
    for field_name, info in family.Params.model_fields.items():
        assert info.description, f"{name}.{field_name} has no description"


@pytest.mark.parametrize("name", FAMILIES)
def test_params_reject_unknown_keys_and_are_frozen(name: str) -> None:
    family = get_family(name)
    with pytest.raises(ValidationError, match=r"n_estimatorz|extra"):
        family.Params.model_validate({**config_params(name), "n_estimatorz": 5})
    params = family.Params.model_validate(config_params(name))
    first = next(iter(family.Params.model_fields))
    with pytest.raises(ValidationError):
        setattr(params, first, 1)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("abuse_detector", "n_estimators", 0),
        ("abuse_detector", "contamination", 0.0),
        ("abuse_detector", "contamination", 0.9),
        ("abuse_detector", "top_fraction", 1.5),
        ("abuse_detector", "max_samples", 1),
        ("limit_optimiser", "max_depth", 0),
        ("limit_optimiser", "learning_rate", 0.0),
        ("limit_optimiser", "subsample", 1.5),
        ("limit_optimiser", "colsample_bytree", -0.1),
        ("limit_optimiser", "n_jobs", 0),
        ("traffic_forecaster", "seasonality_mode", "exponential"),
        ("traffic_forecaster", "changepoint_prior_scale", 0.0),
        ("traffic_forecaster", "holidays_prior_scale", -1.0),
        ("traffic_forecaster", "backtest_folds", -1),
        ("traffic_forecaster", "backtest_horizon_hours", 0),
    ],
)
def test_params_reject_out_of_range_values(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=key):
        get_family(name).Params.model_validate({**config_params(name), key: value})


# --- abuse detector -------------------------------------------------------------------------


def test_abuse_detector_ranks_incidents_first(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["abuse_detector"]
    ev = case.family.evaluate(models["abuse_detector"], case.holdout, case.train)
    got = ev.metrics
    # The gate reads roc_auc and precision_at_k; the rest explain them.
    for key in ("roc_auc", "precision_at_k", "recall_at_k", "average_precision"):
        assert 0.0 <= got[key] <= 1.0, key
    # Planted incidents are far out: chance would be 0.5 AUC and ~4 % precision.
    assert got["roc_auc"] > 0.95
    assert got["precision_at_k"] >= 0.8
    assert got["n_windows"] == len(case.holdout)
    assert got["abuse_share"] == pytest.approx(case.holdout["is_abuse"].mean())
    assert set(ev.figures) == {"score_distribution.png"}


def test_abuse_detector_threshold_flags_the_contamination_share(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["abuse_detector"]
    flagged = case.family.predict(models["abuse_detector"], case.train)["is_abuse"]
    assert flagged.dtype == bool
    assert flagged.mean() == pytest.approx(case.params.contamination, abs=0.005)


def test_abuse_detector_never_sees_the_labels(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    # Unsupervised: scrambled labels must give the very same model (no label leakage).
    case = cases["abuse_detector"]
    scrambled = case.train.assign(is_abuse=1 - case.train["is_abuse"], incident_type="burst")
    other = case.family.train(scrambled, case.params, SEED)
    pd.testing.assert_frame_equal(
        case.family.predict(other, case.holdout),
        case.family.predict(models["abuse_detector"], case.holdout),
    )


def test_abuse_detector_refuses_a_holdout_with_one_class(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["abuse_detector"]
    normal = case.holdout[case.holdout["is_abuse"] == 0]
    with pytest.raises(ValueError, match="ROC-AUC is undefined"):
        case.family.evaluate(models["abuse_detector"], normal, case.train)


# --- limit optimiser ------------------------------------------------------------------------


def test_limit_optimiser_learns_the_limits(cases: dict[str, Case], models: dict[str, Any]) -> None:
    case = cases["limit_optimiser"]
    ev = case.family.evaluate(models["limit_optimiser"], case.holdout, case.train)
    got = ev.metrics
    assert {"mae", "rmse", "r2", "mape"} <= set(got)
    assert got["mae"] <= got["rmse"]
    # Predicting the mean gives R² 0; the limits follow p99 x tier closely.
    assert got["r2"] > 0.9
    assert got["mape"] < 0.15
    assert set(ev.figures) == {"feature_importance.png", "predicted_vs_actual.png"}
    predicted = case.family.predict(models["limit_optimiser"], case.holdout)
    assert (predicted["recommended_limit"] > 0).all()


def test_limit_optimiser_refuses_an_unknown_tier(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["limit_optimiser"]
    records = case.holdout.head(2).assign(tier=["pro", "platinum"])
    with pytest.raises(ValueError, match=r"'tier'.*platinum"):
        case.family.predict(models["limit_optimiser"], records)


# --- traffic forecaster ---------------------------------------------------------------------


def test_traffic_forecaster_beats_seasonal_naive(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["traffic_forecaster"]
    ev = case.family.evaluate(models["traffic_forecaster"], case.holdout, case.train)
    got = ev.metrics
    assert {"smape", "mape", "mase", "baseline_smape", "smape__api", "smape__auth"} <= set(got)
    assert got["smape"] == pytest.approx((got["smape__api"] + got["smape__auth"]) / 2)
    # The holdout holds a holiday: the naive forecast copies a normal Wednesday, Prophet knows.
    assert got["mase"] < 1.0
    assert 0.0 < got["relative_mae"] < 1.0
    assert got["smape"] < got["baseline_smape"]
    assert got["smape"] < 0.15
    assert set(ev.figures) == {"forecast_vs_actual.png"}
    assert len(ev.figures["forecast_vs_actual.png"].axes) == 2


def test_traffic_forecaster_uses_the_holiday_flag(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["traffic_forecaster"]
    hours = pd.DataFrame(
        {"service": "api", "ts": pd.date_range("2025-03-19 10:00", periods=3, freq="h")}
    )
    family, model = case.family, models["traffic_forecaster"]
    plain = family.predict(model, hours)["forecast"]
    holiday = family.predict(model, hours.assign(is_holiday=1))["forecast"]
    # Trained with one holiday at half traffic: a flagged day is forecast well below a normal one.
    assert (holiday < 0.8 * plain).all()


def test_traffic_forecaster_refuses_an_unknown_service(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["traffic_forecaster"]
    records = pd.DataFrame({"service": ["api", "billing"], "ts": ["2025-03-20T10:00:00"] * 2})
    with pytest.raises(ValueError, match="billing"):
        case.family.predict(models["traffic_forecaster"], records)


def test_traffic_forecaster_chooses_per_service_and_keeps_every_score(
    cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases["traffic_forecaster"]
    model = models["traffic_forecaster"]
    rows = model.candidates
    # One row per service and candidate, exactly one chosen per service, the chosen one serving.
    assert {(r["service"], r["candidate"]) for r in rows} == {
        (s, c) for s in ("api", "auth") for c in case.params.candidates
    }
    for service in ("api", "auth"):
        chosen = [r for r in rows if r["service"] == service and r["chosen"]]
        assert len(chosen) == 1
        assert chosen[0]["candidate"] == model.kind(service)
        assert chosen[0]["status"] == "scored"
    # 288 h before the one 48 h fold: Holt-Winters needs two weeks, so it is skipped with the
    # reason, and the service is still served.
    skipped = [r for r in rows if r["candidate"] == "holt_winters"]
    assert len(skipped) == 2
    assert all(r["status"] == "skipped" and "336 h" in r["reason"] for r in skipped)
    scored = {r["candidate"] for r in rows if r["status"] == "scored"}
    assert scored == {"seasonal_naive", "recent_weeks", "daily_adjusted", "top_two", "prophet"}
    # top_two is the mean of the two best closed-form candidates, named in its row.
    for row in (r for r in rows if r["candidate"] == "top_two"):
        assert len(row["parts"]) == 2 and set(row["parts"]) <= scored - {"prophet", "top_two"}
    summary = case.family.summary(model)
    assert summary.params == {f"chosen.{s}": model.kind(s) for s in ("api", "auth")}
    assert summary.tables["candidates"] == rows
    assert sum(
        v for k, v in summary.metrics.items() if k.startswith("chosen_services.")
    ) == pytest.approx(2.0)


def test_traffic_forecaster_fails_a_service_only_when_every_candidate_fails(
    cases: dict[str, Case],
) -> None:
    case = cases["traffic_forecaster"]
    # 10 days of history: MSTL alone cannot fit (two weeks) and no other candidate is allowed.
    short = case.train[case.train["ts"] < case.train["ts"].min() + pd.Timedelta(days=10)]
    only_mstl = case.params.model_copy(update={"candidates": ["mstl"]})
    with pytest.raises(ValueError, match=r"'api'.*no candidate fits.*mstl: skipped.*needs 336"):
        case.family.train(short, only_mstl, SEED)
    # With seasonal naive allowed too, the same history trains: MSTL is skipped, not fatal.
    both = case.params.model_copy(update={"candidates": ["mstl", "seasonal_naive"]})
    model = case.family.train(short, both, SEED)
    assert {model.kind(s) for s in model.services} == {"seasonal_naive"}


def test_traffic_forecaster_loads_a_model_saved_before_candidates(
    cases: dict[str, Case], models: dict[str, Any], tmp_path: Path
) -> None:
    case = cases["traffic_forecaster"]
    prophet_only = case.params.model_copy(update={"candidates": ["prophet"]})
    model = case.family.train(case.train, prophet_only, SEED)
    case.family.save(model, tmp_path)
    # What the family wrote before candidates: no kinds, no table, the old format name.
    index = json.loads((tmp_path / "family.json").read_text())
    for key in ("kinds", "candidates"):
        del index[key]
    index["format"] = "prophet-json"
    (tmp_path / "family.json").write_text(json.dumps(index))
    loaded = case.family.load(tmp_path)
    assert loaded.candidates == []
    pd.testing.assert_frame_equal(
        case.family.predict(loaded, case.holdout), case.family.predict(model, case.holdout)
    )


# --- the interface, for every family --------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip_predicts_the_same(
    name: str, cases: dict[str, Case], models: dict[str, Any], tmp_path: Path
) -> None:
    case = cases[name]
    case.family.save(models[name], tmp_path)
    index = json.loads((tmp_path / "family.json").read_text())
    assert index["family"] == name  # self-describing: the loader needs nothing else
    loaded = case.family.load(tmp_path)
    pd.testing.assert_frame_equal(
        case.family.predict(loaded, case.holdout), case.family.predict(models[name], case.holdout)
    )
    # The champion is re-scored from a loaded copy: it must score the same too.
    scored = case.family.evaluate(loaded, case.holdout, case.train).metrics
    assert scored == case.family.evaluate(models[name], case.holdout, case.train).metrics
    # Every metric a gate may name (checked at config load) is one evaluate reports.
    assert case.family.gate_metrics <= set(scored)


@pytest.mark.parametrize("name", FAMILIES)
def test_saving_the_same_model_twice_writes_the_same_bytes(
    name: str,
    cases: dict[str, Case],
    models: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A version's contents hash must depend on the model alone: the same fitted model saved
    # by another process (other memory addresses: a deep copy) a day later (the clock moved)
    # gives the same files, so every task runner publishes the same bytes.
    case = cases[name]
    (first := tmp_path / "first").mkdir()
    case.family.save(models[name], first)
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)
    (second := tmp_path / "second").mkdir()
    case.family.save(copy.deepcopy(models[name]), second)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for file in files:
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
    # What was written canonically still loads and predicts the same.
    pd.testing.assert_frame_equal(
        case.family.predict(case.family.load(second), case.holdout),
        case.family.predict(models[name], case.holdout),
    )


def test_abuse_detector_file_passes_the_same_trusted_types_audit(
    cases: dict[str, Case], models: dict[str, Any], tmp_path: Path
) -> None:
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    from core.families.abuse_detector import MODEL_FILE, TRUSTED_TYPES

    # The rewrite renames members and ids only: skops' audit finds exactly the types the
    # loader trusts, and a file whose trust list is not given is still refused.
    cases["abuse_detector"].family.save(models["abuse_detector"], tmp_path)
    assert skops.io.get_untrusted_types(file=tmp_path / MODEL_FILE) == TRUSTED_TYPES
    with pytest.raises(UntrustedTypesFoundException):
        skops.io.load(tmp_path / MODEL_FILE)


@pytest.mark.parametrize(
    ("members", "message"),
    [({"model.json": b"{}"}, "no schema.json"), ({"schema.json": b"{}", "x.npy": b""}, "x.npy")],
)
def test_a_foreign_archive_is_refused_by_name(members: dict[str, bytes], message: str) -> None:
    from core.families.skops_archive import canonical_skops

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, body in members.items():
            archive.writestr(member, body)
    with pytest.raises(ValueError, match=message):
        canonical_skops(buffer.getvalue())


@pytest.mark.parametrize("name", FAMILIES)
def test_load_refuses_another_familys_model(
    name: str, cases: dict[str, Case], models: dict[str, Any], tmp_path: Path
) -> None:
    other = FAMILIES[(FAMILIES.index(name) + 1) % len(FAMILIES)]
    cases[other].family.save(models[other], tmp_path)
    with pytest.raises(ValueError, match=other):
        cases[name].family.load(tmp_path)


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_model(name: str, cases: dict[str, Case], models: dict[str, Any]) -> None:
    case = cases[name]
    again = case.family.train(case.train, case.params, SEED)
    pd.testing.assert_frame_equal(
        case.family.predict(again, case.holdout), case.family.predict(models[name], case.holdout)
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_example_request_is_json_and_predictable(
    name: str, cases: dict[str, Case], models: dict[str, Any]
) -> None:
    case = cases[name]
    example = case.family.example_request(case.holdout)
    assert len(example) == 3
    payload = json.loads(json.dumps(example))  # what the smoke test sends over HTTP
    assert all(set(r) == set(case.family.input_columns()) for r in payload)
    predicted = case.family.predict(models[name], pd.DataFrame(payload))
    assert len(predicted) == 3
    assert predicted.notna().all().all()


def _first_non_string(family: Family) -> str:
    return next(c for c, kind in family.input_columns().items() if kind != "string")


@pytest.mark.filterwarnings("ignore:Could not infer format")  # pandas, parsing "not-a-value"
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("fault", ["missing", "wrong type"])
def test_predict_names_a_bad_column(
    name: str, fault: str, cases: dict[str, Case], models: dict[str, Any]
) -> None:
    # The serving app answers 400 with this message: it must say which column is wrong.
    case = cases[name]
    column = _first_non_string(case.family)
    records = pd.DataFrame(case.family.example_request(case.holdout))
    if fault == "missing":
        records = records.drop(columns=[column])
    else:
        records[column] = ["not-a-value"] * len(records)
    with pytest.raises(ValueError, match=column):
        case.family.predict(models[name], records)


# --- MLflow ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/m.db")
    try:
        yield mlflow.create_experiment("families", artifact_location=(root / "art").as_uri())
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_registry_logs_each_family_as_a_loadable_pyfunc(
    name: str, cases: dict[str, Case], models: dict[str, Any], mlflow_experiment: str
) -> None:
    import mlflow

    case = cases[name]
    example = pd.DataFrame(case.family.example_request(case.holdout))
    registry = Registry(mlflow.get_tracking_uri())
    with mlflow.start_run(experiment_id=mlflow_experiment):
        uri = registry.log_model(case.family.mlflow_model(models[name], example))
    assert uri.startswith("models:/")
    pyfunc = mlflow.pyfunc.load_model(uri)
    # The logged model is the served one: request columns and types as schema.json's, the
    # request as JSON carries it, and the family's own answer (every output column).
    columns = case.family.input_columns()
    inputs = pyfunc.metadata.get_input_schema().input_dict()
    assert list(inputs) == list(columns)
    assert pyfunc.metadata.metadata["family"] == name
    records = case.holdout.head(24)
    request = pd.DataFrame(json_records(records, columns))
    got = pyfunc.predict(request)
    want = case.family.predict(models[name], records)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_each_pyfunc_ships_every_project_module_its_family_imports(
    cases: dict[str, Case], models: dict[str, Any], tmp_path: Path
) -> None:
    # `mlflow models serve` has the shipped code only, not this project: load each family's
    # loader and module from the shipped files alone, in a fresh interpreter where the project
    # is taken off sys.path. A module the family imports but the pyfunc does not ship fails
    # here with ModuleNotFoundError, as it would in the served model.
    from adapters.registry import ship_code

    loaded = []
    for name in FAMILIES:
        case = cases[name]
        example = pd.DataFrame(case.family.example_request(case.holdout))
        spec = case.family.mlflow_model(models[name], example)
        paths = ship_code(spec.code_modules, tmp_path / name)
        module = type(case.family).__module__
        loaded.append((paths, [spec.loader_module, module]))
    script = (
        "import importlib, json, sys\n"
        "from pathlib import Path\n"
        f"root = Path({str(PROJECT_ROOT)!r}).resolve()\n"
        "sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != root]\n"
        f"for paths, modules in json.loads({json.dumps(loaded)!r}):\n"
        "    for m in [m for m in sys.modules if m == 'core' or m.startswith('core.')]:\n"
        "        del sys.modules[m]\n"
        "    sys.path[:0] = [str(Path(p).parent) for p in paths]\n"
        "    for module in modules:\n"
        "        assert Path(importlib.import_module(module).__file__).is_relative_to(\n"
        "            Path(paths[0]).parent), module\n"
        "    del sys.path[: len(paths)]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_forecaster_logged_before_the_shared_loader_still_loads(
    cases: dict[str, Case], models: dict[str, Any], mlflow_experiment: str
) -> None:
    import mlflow

    from core.families import MlflowModel

    case = cases["traffic_forecaster"]
    model = models["traffic_forecaster"]
    example = pd.DataFrame(json_records(case.holdout.head(3), case.family.input_columns()))
    # As the forecaster was logged before: its own module as the loader, Prophet files as data.
    old = MlflowModel(
        flavour="pyfunc",
        model=None,
        input_example=example,
        output_example=case.family.predict(model, example),
        pip_requirements=[],
        metadata={"family": "traffic_forecaster"},
        loader_module="core.families.traffic_forecaster",
        code_modules=("core", "core.families", "core.families.traffic_forecaster"),
        save=lambda directory: case.family.save(model, directory),
    )
    with mlflow.start_run(experiment_id=mlflow_experiment):
        uri = Registry(mlflow.get_tracking_uri()).log_model(old)
    got = mlflow.pyfunc.load_model(uri).predict(example)
    pd.testing.assert_frame_equal(got, case.family.predict(model, example))


@pytest.mark.parametrize(
    ("family", "answers", "labels", "expected"),
    [
        # A wrong flag either way is misclassified; only a flag on an innocent client is a
        # false alarm.
        (
            "abuse_detector",
            {"is_abuse": [1, 0, 1, 0]},
            [1, 1, 0, 0],
            {"misclassified": [0, 1, 1, 0], "false_alarm": [0, 0, 1, 0]},
        ),
        # Regressors: absolute error, and relative to max(|label|, 1) so a zero label is finite.
        (
            "limit_optimiser",
            {"recommended_limit": [110.0, 90.0, 3.0]},
            [100.0, 100.0, 0.0],
            {"abs_error": [10.0, 10.0, 3.0], "abs_pct_error": [0.1, 0.1, 3.0]},
        ),
        (
            "traffic_forecaster",
            {"forecast": [50.0, 200.0]},
            [40.0, 250.0],
            {"abs_error": [10.0, 50.0], "abs_pct_error": [0.25, 0.2]},
        ),
    ],
)
def test_each_family_scores_one_experiment_loss_per_answered_request(
    family: str, answers: dict[str, list[float]], labels: list[float], expected: dict[str, list]
) -> None:
    impl = get_family(family)
    frame = pd.DataFrame(answers, index=[7 + i for i in range(len(labels))])
    losses = impl.request_losses(frame, pd.Series(labels, index=frame.index))
    # One column per experiment metric, one row per request, aligned with the answers.
    assert list(losses.columns) == list(impl.experiment_metrics)
    assert list(losses.index) == list(frame.index)
    for metric, values in expected.items():
        assert losses[metric].tolist() == pytest.approx(values), metric
    with pytest.raises(ValueError, match="column"):
        impl.request_losses(frame.rename(columns=lambda c: "other"), pd.Series(labels))
