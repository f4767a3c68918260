"""Traffic forecaster: hourly requests per service, one forecaster per service chosen by backtest.

Each service's forecaster is chosen from candidates (``params.candidates``) by a rolling-origin
backtest on that service's own training window: Prophet with daily and weekly seasonality and
one holiday effect named ``holiday``, the statistical candidates of
:mod:`core.families.forecast_candidates`, and seasonal naive itself, the floor. The best is
refitted on the whole window and serves the service; every candidate's score and the winner
stay with the model (:meth:`TrafficForecaster.summary`).

Holidays come from the data's ``is_holiday`` flag, not from a country calendar: a holiday is a
date with ``is_holiday == 1`` on any row. The calendar is known ahead of time, so a forecast may
use the flags of the hours it forecasts: :meth:`TrafficForecaster.evaluate` takes them from the
holdout, and :meth:`TrafficForecaster.predict` from an optional ``is_holiday`` request column.
Those dates join the model's own holiday list for that forecast only; a holiday has an effect
only if the training window held one, since the effect is learnt from it.

Judged against seasonal naive (the value 168 h earlier): ``mase`` is the MAE scaled by its
in-sample MAE on the history, ``baseline_smape`` its own sMAPE on the holdout.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from core.families import (
    Evaluation,
    Family,
    MlflowModel,
    TrainingSummary,
    check_columns,
    column_arrays,
    json_records,
    model_file,
    pyfunc_model,
)
from core.families import backtest as bt
from core.families import forecast_candidates as fc
from core.families import metrics as m
from core.families.forecast_model import (
    FORMAT,
    INDEX_FILE,
    INPUTS,
    SEASON,
    ForecastModel,
    TrafficForecasterParams,
    _holiday_dates,
    _holidays_frame,
    _hourly,
    _metric_key,
    _naive_utc,
    _quiet,
    _ratio,
    _series,
    backtest_summary,
)

Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]
"""The builtin ``map``'s shape: how :meth:`TrafficForecaster.train` runs its services."""

log = logging.getLogger(__name__)


class TrafficForecaster(Family):
    """Prophet per service, scored against the seasonal-naive forecast."""

    name = "traffic_forecaster"
    gate_metrics = frozenset(
        {
            "smape",
            "mape",
            "mase",
            "baseline_smape",
            "baseline_mase",
            "relative_mae",
            "n_services",
            "n_hours",
        }
    )
    Params = TrafficForecasterParams

    # --- training -----------------------------------------------------------------------

    def train(
        self, frame: pd.DataFrame, params: Any, seed: int, mapper: Mapper = map
    ) -> ForecastModel:
        """Choose and fit one forecaster per service on the training window.

        The services are independent: ``mapper`` (the builtin ``map`` by default; the training
        task passes one that fans out over the configured Prefect task runner) applies
        :meth:`_fit_service` to each ``(service, rows)``; results come back in the same order,
        so the model is the same whichever runner fitted it.

        Raises:
            ValueError: bad columns, a service with fewer than two days of hours, or a service
                for which every candidate failed (the message gives each candidate's reason).
        """
        _quiet()
        p = TrafficForecasterParams.model_validate(params)
        series = _series(frame)
        if not series:
            raise ValueError("traffic_forecaster: no training rows")
        dates = _holiday_dates(frame)
        for service, df in series.items():
            if len(df) < 48:
                raise ValueError(
                    f"traffic_forecaster: service {service!r} has {len(df)} hours; need >= 48"
                )
        fit = functools.partial(self._fit_service, p=p, dates=dates, seed=seed)
        models: dict[str, Any] = {}
        table: list[dict[str, Any]] = []
        for service, (fitted, rows) in zip(series, mapper(fit, series.items()), strict=True):
            models[service] = fitted
            table += rows
        return ForecastModel(models, sorted(dates), p.model_dump(mode="json"), table)

    def _fit_service(
        self,
        item: tuple[str, pd.DataFrame],
        p: TrafficForecasterParams,
        dates: set[str],
        seed: int,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """One service's chosen, fitted forecaster and its candidates' rows (picklable)."""
        _quiet()
        service, df = item
        fitted, rows = self._choose(service, df, p, dates, seed)
        return fitted, [r.to_dict() for r in rows]

    def _fitters(
        self,
        service: str,
        df: pd.DataFrame,
        p: TrafficForecasterParams,
        dates: set[str],
        seed: int,
        last: dict[Any, Any],
    ) -> dict[str, Callable[[pd.Series, pd.DatetimeIndex], np.ndarray]]:
        """Candidate name -> fit on a history and forecast the given hours.

        ``last`` keeps the latest Prophet fit (the next one's warm start) and each fold's
        MSTL fit, which ``mstl_naive`` reuses instead of decomposing the same history again.
        """
        from core.families.prophet_fit import fit_prophet

        def prophet(train: pd.Series, hours: pd.DatetimeIndex) -> np.ndarray:
            seen = {d for d in dates if d <= train.index[-1].date().isoformat()}
            rows = df[df["ds"] <= train.index[-1]]
            fitted = fit_prophet(rows, p, _holidays_frame(seen), seed, last.get(fc.PROPHET))
            last[fc.PROPHET] = fitted
            one = ForecastModel({service: fitted}, sorted(seen))
            return self._forecast(one, service, pd.Series(hours), dates)

        def closed_form(name: str) -> Callable[[pd.Series, pd.DatetimeIndex], np.ndarray]:
            def fit_predict(train: pd.Series, hours: pd.DatetimeIndex) -> np.ndarray:
                return self._closed_form(name, train, dates, last).predict(hours, dates)

            return fit_predict

        return {name: prophet if name == fc.PROPHET else closed_form(name) for name in p.candidates}

    @staticmethod
    def _closed_form(
        name: str, y: pd.Series, dates: set[str], last: dict[Any, Any], parts: Sequence[str] = ()
    ) -> fc.Profile:
        """Fit a closed-form candidate, reusing this history's MSTL fit where there is one.

        ``top_two`` is the mean of its two ``parts``, each fitted here.
        """
        if name == fc.TOP_TWO:
            fitted = [TrafficForecaster._closed_form(n, y, dates, last) for n in parts]
            return fc.Profile(fc.TOP_TWO, fitted[0].origin, parts=fitted)
        if name not in (fc.MSTL, fc.MSTL_NAIVE):
            return fc.FITTERS[name](y, dates)
        key = (fc.MSTL, y.index[0], y.index[-1])
        if key not in last:
            last[key] = fc.fit_mstl(y, dates)
        if name == fc.MSTL:
            return last[key]
        both = [last[key], fc.fit_seasonal_naive(y, dates)]
        return fc.Profile(fc.MSTL_NAIVE, both[0].origin, parts=both)

    def _choose(
        self, service: str, df: pd.DataFrame, p: TrafficForecasterParams, dates: set[str], seed: int
    ) -> tuple[Any, list[bt.CandidateScore]]:
        """Backtest the candidates on one service, refit the best on all of it."""
        from core.families.prophet_fit import fit_prophet

        y = fc.hourly(df["ds"], df["y"])
        folds = bt.common_folds(y, p.backtest_folds, p.backtest_horizon_hours, p.candidates)
        last: dict[Any, Any] = {}
        fitters = self._fitters(service, df, p, dates, seed, last)
        rows, runs = bt.score_candidates(service, y, fitters, folds, p.expensive_folds)
        for row in rows:
            if row.status != "scored":
                log.info(
                    "traffic_forecaster: %s: %s %s: %s",
                    service,
                    row.candidate,
                    row.status,
                    row.reason,
                )
        by_name = {r.candidate: r for r in rows}
        for name in bt.ranking(rows, p.candidates, runs):
            try:
                if name == fc.PROPHET:
                    warm = last.get(fc.PROPHET)
                    fitted: Any = fit_prophet(df, p, _holidays_frame(dates), seed, warm)
                else:
                    fitted = self._closed_form(name, y, dates, last, by_name[name].parts)
            except Exception as exc:  # the next best candidate serves instead
                log.warning("traffic_forecaster: %s: refitting %s failed: %s", service, name, exc)
                by_name[name].status, by_name[name].reason = "failed", f"refit: {exc}"[:300]
                continue
            by_name[name].chosen = True
            return fitted, rows
        reasons = "; ".join(f"{r.candidate}: {r.status}: {r.reason}" for r in rows)
        raise ValueError(f"traffic_forecaster: service {service!r}: no candidate fits ({reasons})")

    # --- forecasting --------------------------------------------------------------------

    def _forecast(
        self, model: ForecastModel, service: str, ts: pd.Series, extra_holidays: set[str]
    ) -> np.ndarray:
        """Forecast of ``service`` at the timestamps ``ts`` (any order, duplicates allowed)."""
        prophet = model.models[service]
        if isinstance(prophet, fc.Profile):
            return prophet.predict(ts, set(model.holiday_dates) | extra_holidays)
        new_dates = extra_holidays - set(model.holiday_dates)
        if new_dates and prophet.train_holiday_names is not None:
            # A shallow copy with a longer calendar: the fitted model itself is not touched.
            prophet = copy.copy(prophet)
            prophet.holidays = _holidays_frame(set(model.holiday_dates) | new_dates)
        unique = pd.DataFrame({"ds": pd.Series(ts.unique()).sort_values(ignore_index=True)})
        yhat = prophet.predict(unique).set_index("ds")["yhat"]
        # Requests are counts: a trend dipping below zero means "none", not negative traffic.
        return np.clip(yhat.reindex(ts.to_numpy()).to_numpy(dtype="float64"), 0.0, None)

    def _score(
        self, model: ForecastModel, holdout: pd.DataFrame, history: pd.DataFrame
    ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """Metrics (aggregated and per service) and the plot panels, without the figure."""
        _quiet()
        test = _series(holdout)
        past = _series(history)
        if not test:
            raise ValueError("traffic_forecaster: the holdout has no rows")
        unknown = sorted(set(test) - set(model.models))
        if unknown:
            raise ValueError(f"traffic_forecaster: the model has no service(s) {unknown}")
        missing = sorted(set(test) - set(past))
        if missing:
            raise ValueError(f"traffic_forecaster: no history for service(s) {missing}")
        holidays = _holiday_dates(holdout)
        per: dict[str, dict[str, float]] = {}
        panels: dict[str, dict[str, Any]] = {}
        for service, df in test.items():
            actual = df["y"].to_numpy(dtype="float64")
            forecast = self._forecast(model, service, df["ds"], holidays)
            hist = _hourly(past[service])
            last = hist.index[-1]
            steps = ((df["ds"] - last) / pd.Timedelta(hours=1)).to_numpy()
            if (steps < 1).any():
                raise ValueError(
                    f"traffic_forecaster: holdout of {service!r} overlaps its history (ends {last})"
                )
            naive = m.seasonal_naive(hist.to_numpy(), int(steps.max()), SEASON)
            baseline = naive[np.round(steps).astype(int) - 1]
            per[service] = {
                "smape": m.smape(actual, forecast),
                "mape": m.mape(actual, forecast),
                "mase": m.mase(actual, forecast, hist.to_numpy(), SEASON),
                "baseline_smape": m.smape(actual, baseline),
                "baseline_mase": m.mase(actual, baseline, hist.to_numpy(), SEASON),
            }
            panels[service] = {
                "ts": df["ds"],
                "actual": actual,
                "forecast": forecast,
                "baseline": baseline,
            }
            # MAE relative to the seasonal-naive forecast of the same hours (MASE over its
            # baseline's MASE; the in-sample scale cancels). Below 1 beats seasonal naive.
            per[service]["relative_mae"] = _ratio(
                per[service]["mase"], per[service]["baseline_mase"]
            )
        names = ["smape", "mape", "mase", "baseline_smape", "baseline_mase", "relative_mae"]
        metrics = {k: float(np.mean([v[k] for v in per.values()])) for k in names}
        metrics["n_services"] = float(len(per))
        metrics["n_hours"] = float(sum(len(df) for df in test.values()))
        for service, values in per.items():
            metrics[f"smape__{_metric_key(service)}"] = values["smape"]
            metrics[f"relative_mae__{_metric_key(service)}"] = values["relative_mae"]
        return metrics, panels

    def evaluate(
        self, model: ForecastModel, holdout: pd.DataFrame, history: pd.DataFrame
    ) -> Evaluation:
        """Forecast the holdout's hours per service and score them (means over services).

        Metrics: ``smape``, ``mape``, ``mase``, ``baseline_smape``, ``baseline_mase``,
        ``relative_mae`` (MAE over the seasonal-naive forecast's MAE on the same hours), and
        ``smape__<service>`` and ``relative_mae__<service>`` per service. ``history`` (the
        data before the holdout) gives MASE's scale and the seasonal-naive forecast.

        Raises:
            ValueError: bad columns, a service the model or the history lacks, a history
                shorter than a week, or a holdout overlapping the history.
        """
        metrics, panels = self._score(model, holdout, history)
        return Evaluation(
            metrics=metrics, figures={"forecast_vs_actual.png": m.forecast_figure(panels)}
        )

    def summary(self, model: ForecastModel) -> TrainingSummary:
        """The candidates' backtest: :func:`~core.families.forecast_model.backtest_summary`."""
        params, metrics = backtest_summary(model)
        return TrainingSummary(
            params=params, metrics=metrics, tables={"candidates": model.candidates}
        )

    # --- persistence and serving --------------------------------------------------------

    def save(self, model: ForecastModel, directory: Path) -> None:
        """One ``prophet_NN.json`` per service (Prophet's own JSON) and ``family.json``."""
        import prophet
        from prophet.serialize import model_to_json

        _quiet()
        files = {}
        for i, service in enumerate(model.services):
            fitted = model.models[service]
            if isinstance(fitted, fc.Profile):
                files[service] = f"profile_{i:02d}.json"
                text = json.dumps(fitted.to_dict(), sort_keys=True)
            else:
                files[service] = f"prophet_{i:02d}.json"
                text = model_to_json(fitted)
            (directory / files[service]).write_text(text)
        index = {
            "family": self.name,
            "format": FORMAT,
            "services": files,
            "kinds": {service: model.kind(service) for service in model.services},
            # Without the fit times (MLflow's candidates table keeps them): the same model
            # saves to the same bytes, whichever runner and however loaded the machine.
            "candidates": [
                {k: v for k, v in row.items() if k != "fit_seconds"} for row in model.candidates
            ],
            "holiday_dates": model.holiday_dates,
            "params": model.params,
            "inputs": INPUTS,
            "prophet_version": prophet.__version__,
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

    def load(self, directory: Path) -> ForecastModel:
        """Load a model written by :meth:`save`.

        Raises:
            ValueError: the directory holds another family's model.
        """
        _quiet()
        from prophet.serialize import model_from_json

        index = json.loads((Path(directory) / INDEX_FILE).read_text())
        if index.get("family") != self.name:
            raise ValueError(f"{directory} holds a {index.get('family')!r} model, not {self.name}")
        kinds = index.get("kinds", {})  # absent in the old format: every service a Prophet
        models: dict[str, Any] = {}
        for service, name in index["services"].items():
            text = model_file(directory, name).read_text()
            if kinds.get(service, fc.PROPHET) == fc.PROPHET:
                models[service] = model_from_json(text)
            else:
                models[service] = fc.Profile.from_dict(json.loads(text))
        return ForecastModel(
            models=models,
            holiday_dates=list(index["holiday_dates"]),
            params=index["params"],
            candidates=list(index.get("candidates", [])),
        )

    def predict(self, model: ForecastModel, records: pd.DataFrame) -> pd.DataFrame:
        """``forecast`` (requests in the hour) per ``service``/``ts`` record.

        An optional ``is_holiday`` column (0/1) marks dates as holidays for this forecast.

        Raises:
            ValueError: a column is missing or mistyped, or an unknown service; names it.
        """
        _quiet()
        checked = check_columns(records, INPUTS)
        checked["ts"] = _naive_utc(checked["ts"])
        unknown = sorted(set(checked["service"]) - set(model.models))
        if unknown:
            raise ValueError(
                f"column 'service' has unknown service(s) {unknown}; known: {model.services}"
            )
        holidays = set()
        if "is_holiday" in records.columns:
            holidays = _holiday_dates(records.assign(ts=checked["ts"]))
        out = pd.Series(np.nan, index=records.index, dtype="float64")
        for service, rows in checked.groupby("service", sort=True):
            out.loc[rows.index] = self._forecast(model, str(service), rows["ts"], holidays)
        return pd.DataFrame({"forecast": out}, index=records.index)

    def predict_columns(
        self, model: ForecastModel, columns: Mapping[str, Sequence[Any]]
    ) -> dict[str, Any]:
        """:meth:`predict` for plain columns, with Prophet's point forecast in numpy.

        ``Prophet.predict`` builds several DataFrames per call (about 20 ms for one hour); the
        point forecast it returns is a piecewise-linear trend times (1 + seasonal terms) plus
        additive terms, which :class:`~core.families.prophet_point.PointForecast` evaluates
        with the fitted parameters and the same float operations. A request with
        ``is_holiday``, or a model using what that class does not cover, takes :meth:`predict`.

        Raises:
            ValueError: as :meth:`predict`.
        """
        if "is_holiday" in columns:
            return super().predict_columns(model, columns)
        checked = column_arrays(columns, INPUTS)
        service = checked["service"]
        ts = checked["ts"]
        if ts.dtype != np.dtype("datetime64[ns]"):
            ts = _naive_utc(pd.Series(ts)).to_numpy()
        unknown = sorted(set(service.tolist()) - set(model.models))
        if unknown:
            raise ValueError(
                f"column 'service' has unknown service(s) {unknown}; known: {model.services}"
            )
        out = np.full(len(service), np.nan, dtype="float64")
        for name in sorted(set(service.tolist())):
            rows = service == name
            point = model.point_forecasts.get(name)
            if point is None:
                out[rows] = self._forecast(model, name, pd.Series(ts[rows]), set())
            else:
                out[rows] = point.forecast(ts[rows])
        return {"forecast": out}

    experiment_metrics: ClassVar[dict[str, str]] = {"abs_error": "lower", "abs_pct_error": "lower"}
    label_column = "requests"
    answer_column = "forecast"

    def input_columns(self) -> dict[str, str]:
        """``service`` and the hour ``ts`` to forecast."""
        return dict(INPUTS)

    def example_request(self, holdout: pd.DataFrame) -> list[dict[str, Any]]:
        """Three holdout hours (first rows in time order), JSON-ready."""
        ordered = holdout.sort_values(["ts", "service"], kind="stable")
        return json_records(ordered.head(3), INPUTS)

    def mlflow_model(self, model: ForecastModel, input_example: pd.DataFrame) -> MlflowModel:
        """The forecaster as the served model: a pyfunc of :meth:`load` and :meth:`predict`.

        It takes ``service`` and ``ts`` and answers ``forecast``, as the endpoint does; the
        model directory is the JSON that :meth:`save` writes (no pickle).
        """
        import matplotlib
        import sklearn
        import statsmodels
        from prophet import __version__ as prophet_version

        return pyfunc_model(
            self,
            model,
            input_example,
            [
                f"prophet=={prophet_version}",
                f"statsmodels=={statsmodels.__version__}",
                f"scikit-learn=={sklearn.__version__}",
                f"matplotlib=={matplotlib.__version__}",
            ],
            {"services": model.services, "chosen": {s: model.kind(s) for s in model.services}},
        )


def _load_pyfunc(data_path: str) -> Any:
    """The loader hook of versions logged before :mod:`core.families.pyfunc` existed."""
    from core.families.pyfunc import _load_pyfunc as load

    return load(data_path)


FAMILY = TrafficForecaster()
