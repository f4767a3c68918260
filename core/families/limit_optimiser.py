"""Limit optimiser: an XGBoost regressor recommending a per-client rate limit (requests/s).

The target is ``best_limit``, the limit that served each client well on a day. Limits span
orders of magnitude across tiers and the gate judges relative error (MAPE), so the booster
fits a gamma objective: a log link, predictions always positive and in requests/s, and a loss
that weighs an error relative to the limit's size. The MLflow ``xgboost`` flavour therefore
returns limits directly, with no back-transform hidden in this module.

``tier`` is one-hot encoded over a fixed set; a new tier is refused (a code change first), as
the data validation suite also says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from core.families import (
    Evaluation,
    Family,
    MlflowModel,
    check_columns,
    column_arrays,
    json_records,
    model_file,
    pyfunc_model,
)
from core.families import metrics as m

TIERS: tuple[str, ...] = ("free", "pro", "enterprise")
"""Client tiers, in the order of the one-hot columns."""
NUMERIC: dict[str, str] = {
    "avg_rps": "float64",
    "p95_rps": "float64",
    "p99_rps": "float64",
    "burst_ratio": "float64",
    "error_rate": "float64",
    "account_age_days": "int64",
    "endpoints_used": "int64",
}
INPUTS: dict[str, str] = {"tier": "string", **NUMERIC}
"""The request schema: raw columns before encoding."""
FEATURES = [*(f"tier_{t}" for t in TIERS), *NUMERIC]
"""The booster's input columns, in order: the one-hot tier, then the numeric columns."""
TARGET = "best_limit"
OBJECTIVE = "reg:gamma"
MODEL_FILE = "model.ubj"
INDEX_FILE = "family.json"


class LimitOptimiserParams(BaseModel):
    """Hyperparameters of the limit optimiser (``params:`` in limit_optimiser.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(default=200, ge=1, le=5000, description="Boosting rounds.")
    max_depth: int = Field(default=6, ge=1, le=16, description="Maximum depth of each tree.")
    learning_rate: float = Field(
        default=0.08, gt=0.0, le=1.0, description="Shrinkage applied to each tree (eta)."
    )
    subsample: float = Field(
        default=0.9, gt=0.0, le=1.0, description="Share of rows sampled for each tree."
    )
    colsample_bytree: float = Field(
        default=0.9, gt=0.0, le=1.0, description="Share of features sampled for each tree."
    )
    n_jobs: int = Field(default=2, ge=1, le=64, description="Threads XGBoost may use.")


def encode(records: pd.DataFrame) -> pd.DataFrame:
    """Validate the request columns and return the booster's feature frame (:data:`FEATURES`).

    Raises:
        ValueError: a column is missing or mistyped, or ``tier`` holds an unknown value.
    """
    checked = check_columns(records, INPUTS)
    tier = checked["tier"]
    unknown = sorted(set(tier.unique()) - set(TIERS))
    if unknown:
        raise ValueError(f"column 'tier' has unknown value(s) {unknown}; known: {list(TIERS)}")
    out = pd.DataFrame(
        {f"tier_{t}": (tier == t).astype("float64") for t in TIERS}, index=records.index
    )
    for col in NUMERIC:
        out[col] = checked[col].astype("float64")
    return out[FEATURES]


Params = LimitOptimiserParams
"""The family's hyperparameter model (also ``FAMILY.Params``)."""


@dataclass(frozen=True)
class LimitModel:
    """A fitted regressor (``xgboost.XGBRegressor`` on :func:`encode`'d features)."""

    regressor: Any

    def recommend(self, features: pd.DataFrame) -> np.ndarray:
        """Recommended limit per row of encoded features."""
        if features.empty:
            return np.empty(0)
        return np.asarray(self.regressor.predict(features[FEATURES]), dtype="float64")

    @cached_property
    def _booster(self) -> Any:
        # A copy on one thread: a request's few rows gain nothing from an OpenMP team, and on
        # a busy two-core machine a team of two spent 4 ms a call waiting for its second core
        # (0.6 ms alone). The training booster keeps its n_jobs.
        booster = self.regressor.get_booster().copy()
        booster.set_param({"nthread": 1})
        return booster

    def recommend_array(self, matrix: np.ndarray) -> np.ndarray:
        """:meth:`recommend` for a float matrix whose columns are :data:`FEATURES`, in order."""
        if not len(matrix):
            return np.empty(0)
        # What XGBRegressor.predict calls for a DataFrame, after its checks: every tree (no
        # early stopping here), missing values as NaN, plain values.
        answer = self._booster.inplace_predict(matrix, validate_features=False)
        return np.asarray(answer, dtype="float64")


class LimitOptimiser(Family):
    """XGBoost (hist) regression of ``best_limit`` on client features."""

    name = "limit_optimiser"
    gate_metrics = frozenset({"mae", "rmse", "r2", "mape", "n_rows"})
    Params = LimitOptimiserParams

    def _regressor(self, p: LimitOptimiserParams, seed: int) -> Any:
        from xgboost import XGBRegressor

        return XGBRegressor(
            objective=OBJECTIVE,
            tree_method="hist",
            n_estimators=p.n_estimators,
            max_depth=p.max_depth,
            learning_rate=p.learning_rate,
            subsample=p.subsample,
            colsample_bytree=p.colsample_bytree,
            n_jobs=p.n_jobs,
            random_state=seed,
        )

    def train(self, frame: pd.DataFrame, params: Any, seed: int) -> LimitModel:
        """Fit the regressor on the training rows.

        Raises:
            ValueError: a column is missing or mistyped, an unknown tier, a non-positive target
                (the gamma objective needs limits > 0), or an empty frame.
        """
        p = LimitOptimiserParams.model_validate(params)
        features = encode(frame)
        if features.empty:
            raise ValueError("limit_optimiser: no training rows")
        target = check_columns(frame, {TARGET: "float64"})[TARGET]
        if (target <= 0).any():
            raise ValueError(f"column {TARGET!r} must be > 0 (a limit of zero blocks a client)")
        regressor = self._regressor(p, seed)
        regressor.fit(features, target.to_numpy())
        return LimitModel(regressor)

    def evaluate(
        self, model: LimitModel, holdout: pd.DataFrame, history: pd.DataFrame
    ) -> Evaluation:
        """Error of the recommended limits against the holdout's ``best_limit``.

        ``baseline_mape`` is the tier's median limit per unit of p99 in ``history`` times the
        row's p99: a one-line rule a human might use, for scale.

        Raises:
            ValueError: bad columns or an empty holdout.
        """
        features = encode(holdout)
        if features.empty:
            raise ValueError("limit_optimiser: the holdout has no rows")
        actual = check_columns(holdout, {TARGET: "float64"})[TARGET].to_numpy()
        predicted = model.recommend(features)
        metrics = {
            "mae": m.mae(actual, predicted),
            "rmse": m.rmse(actual, predicted),
            "r2": m.r2(actual, predicted),
            "mape": m.mape(actual, predicted),
            "n_rows": float(len(actual)),
        }
        baseline = _tier_ratio_baseline(history, holdout)
        if baseline is not None:
            metrics["baseline_mape"] = m.mape(actual, baseline)
        figures = {
            "feature_importance.png": m.feature_importance_figure(
                _importance(model), "XGBoost feature importance (total gain, normalised)"
            ),
            "predicted_vs_actual.png": m.predicted_vs_actual_figure(
                actual, predicted, "best_limit (req/s)"
            ),
        }
        return Evaluation(metrics=metrics, figures=figures)

    def save(self, model: LimitModel, directory: Path) -> None:
        """Write the booster in XGBoost's native UBJSON format and ``family.json``."""
        import xgboost

        model.regressor.save_model(directory / MODEL_FILE)
        index = {
            "family": self.name,
            "format": "xgboost-ubj",
            "model_file": MODEL_FILE,
            "inputs": INPUTS,
            "features": FEATURES,
            "tiers": list(TIERS),
            "target": TARGET,
            "objective": OBJECTIVE,
            "xgboost_version": xgboost.__version__,
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

    def load(self, directory: Path) -> LimitModel:
        """Load a model written by :meth:`save`.

        Raises:
            ValueError: the directory holds another family's model, or other features.
        """
        from xgboost import XGBRegressor

        index = json.loads((directory / INDEX_FILE).read_text())
        if index.get("family") != self.name:
            raise ValueError(f"{directory} holds a {index.get('family')!r} model, not {self.name}")
        if index.get("features") != FEATURES:
            raise ValueError(f"{directory}: model features {index.get('features')} != {FEATURES}")
        regressor = XGBRegressor()
        regressor.load_model(model_file(directory, index.get("model_file")))
        return LimitModel(regressor)

    def predict(self, model: LimitModel, records: pd.DataFrame) -> pd.DataFrame:
        """``recommended_limit`` (requests/s) per record.

        Raises:
            ValueError: a column is missing or mistyped, or an unknown tier; names the column.
        """
        features = encode(records)
        return pd.DataFrame({"recommended_limit": model.recommend(features)}, index=records.index)

    # XGBoost spends 0.1-0.4 ms a call on setup whatever the rows (a proxy matrix, the
    # config, the thread pool), and predicts each row alone: concurrent requests share calls.
    batchable = True

    def predict_columns(
        self, model: LimitModel, columns: Mapping[str, Sequence[Any]]
    ) -> dict[str, Any]:
        """:meth:`predict` for plain columns: one feature matrix and the booster's own predict.

        ``XGBRegressor.predict`` on a one-row DataFrame spends 10x the booster's time on pandas
        checks; ``Booster.inplace_predict`` on the same numbers in a numpy array answers the
        same floats (the regression test compares them on thousands of rows).

        Raises:
            ValueError: as :meth:`predict`.
        """
        checked = column_arrays(columns, INPUTS)
        tier = checked["tier"]
        unknown = sorted(set(tier.tolist()) - set(TIERS))
        if unknown:
            raise ValueError(f"column 'tier' has unknown value(s) {unknown}; known: {list(TIERS)}")
        matrix = np.empty((len(tier), len(FEATURES)), dtype="float64")
        for i, t in enumerate(TIERS):
            matrix[:, i] = tier == t
        for i, col in enumerate(NUMERIC, start=len(TIERS)):
            matrix[:, i] = checked[col]
        return {"recommended_limit": model.recommend_array(matrix)}

    experiment_metrics: ClassVar[dict[str, str]] = {"abs_error": "lower", "abs_pct_error": "lower"}
    label_column = TARGET
    answer_column = "recommended_limit"

    def input_columns(self) -> dict[str, str]:
        """``tier`` and the seven numeric client features."""
        return dict(INPUTS)

    def example_request(self, holdout: pd.DataFrame) -> list[dict[str, Any]]:
        """The first three holdout rows' request columns, JSON-ready."""
        return json_records(holdout.head(3), INPUTS)

    def mlflow_model(self, model: LimitModel, input_example: pd.DataFrame) -> MlflowModel:
        """The optimiser as the served model: a pyfunc of :meth:`load` and :meth:`predict`.

        It takes the request columns (``tier`` as a string), not the booster's one-hot
        features, and answers ``recommended_limit``, as the endpoint does.
        """
        import sklearn
        import xgboost

        return pyfunc_model(
            self,
            model,
            input_example,
            [f"xgboost=={xgboost.__version__}", f"scikit-learn=={sklearn.__version__}"],
            {"features": FEATURES},
        )


def _importance(model: LimitModel) -> dict[str, float]:
    gain = model.regressor.get_booster().get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return {f: gain.get(f, 0.0) / total for f in FEATURES}


def _tier_ratio_baseline(history: pd.DataFrame, holdout: pd.DataFrame) -> np.ndarray | None:
    """Median ``best_limit / p99_rps`` of each tier in ``history``, times the holdout's p99."""
    needed = {"tier", "p99_rps", TARGET}
    if history is None or history.empty or not needed <= set(history.columns):
        return None
    hist = history[list(needed)].dropna()
    hist = hist[hist["p99_rps"] > 0]
    if hist.empty:
        return None
    ratio = (hist[TARGET] / hist["p99_rps"]).groupby(hist["tier"].astype("string")).median()
    overall = float((hist[TARGET] / hist["p99_rps"]).median())
    factor = holdout["tier"].astype("string").map(ratio).astype("float64").fillna(overall)
    return (factor * holdout["p99_rps"].astype("float64")).to_numpy()


FAMILY = LimitOptimiser()
