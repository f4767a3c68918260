"""Abuse detector: an IsolationForest over per-client hourly traffic windows.

Trained unsupervised on the behaviour columns only (the labels ``is_abuse`` and
``incident_type`` never reach the model); evaluated on the labelled incidents of the holdout by
how well the anomaly score ranks abusive windows first.

The flagging threshold is fixed at training time: the ``1 - contamination`` quantile of the
training windows' anomaly scores, which is exactly IsolationForest's own ``offset_``. So
``is_abuse`` from :meth:`AbuseDetector.predict` and ``-1`` from the estimator's ``predict``
always agree. The model logged to MLflow is this module's ``predict`` (score and flag).
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
from core.families.skops_archive import canonical_skops

FEATURES: dict[str, str] = {
    "requests": "int64",
    "error_rate": "float64",
    "unique_paths": "int64",
    "unique_ips": "int64",
    "login_attempts": "int64",
    "failed_login_rate": "float64",
    "kb_out": "float64",
    "mean_interarrival_ms": "float64",
}
"""Model inputs (the request schema) and their types; the label columns are not among them."""

LABEL = "is_abuse"
MODEL_FILE = "model.skops"
INDEX_FILE = "family.json"
# skops refuses to load any type not listed here; the list is ours, never read from the file.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class AbuseDetectorParams(BaseModel):
    """Hyperparameters of the abuse detector (``params:`` in configs/models/abuse_detector.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(default=200, ge=10, le=5000, description="Number of isolation trees.")
    max_samples: int = Field(
        default=4096,
        ge=16,
        le=1_000_000,
        description="Windows sub-sampled per tree (capped at the training rows).",
    )
    contamination: float = Field(
        default=0.03,
        gt=0.0,
        le=0.5,
        description="Expected share of abusive windows; sets the flagging threshold.",
    )
    top_fraction: float = Field(
        default=0.02,
        gt=0.0,
        le=0.5,
        description="Share of highest-scoring windows that precision@k and recall@k look at.",
    )


Params = AbuseDetectorParams
"""The family's hyperparameter model (also ``FAMILY.Params``)."""


@dataclass(frozen=True)
class AbuseModel:
    """A fitted detector: the estimator plus what evaluation and serving need to know."""

    estimator: Any  # sklearn.ensemble.IsolationForest, fitted on a frame of FEATURES
    threshold: float
    top_fraction: float
    contamination: float

    def scores(self, features: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row: higher = more anomalous (the negated ``score_samples``)."""
        return -np.asarray(self.estimator.score_samples(features[list(FEATURES)]), dtype=float)

    @cached_property
    def _forest(self) -> _PackedForest:
        return _PackedForest.of(self.estimator)

    def fast_scores(self, matrix: np.ndarray) -> np.ndarray:
        """:meth:`scores` for a float matrix whose columns are :data:`FEATURES`, in order.

        ``score_samples`` validates its input and walks the trees one by one through joblib:
        about 5 ms a call whatever the rows. :class:`_PackedForest` walks all trees at once
        with the same comparisons and sums the same path lengths in the same order, so the
        floats are the same (a regression test compares them on thousands of rows).
        """
        from sklearn.ensemble._iforest import _average_path_length

        x = np.ascontiguousarray(matrix, dtype=np.float32)
        forest = self._forest
        # All trees at once wins on a few rows; tree by tree (scikit-learn's Cython walk,
        # without its per-call checks) on many, where the level-by-level arrays grow large.
        depths = forest.depths(x) if len(x) <= PACKED_ROWS else forest.depths_by_tree(x)
        est = self.estimator
        denominator = len(est.estimators_) * _average_path_length([est._max_samples])
        scores = 2 ** (
            -np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)
        )
        return -np.asarray(-scores, dtype=float)


PACKED_ROWS = 24
"""Up to this many rows, :class:`_PackedForest` walks all trees at once (measured crossover)."""


@dataclass(frozen=True)
class _PackedForest:
    """Every isolation tree of a fitted forest in flat arrays, walked level by level.

    Node ``i`` of the packed forest tests ``feature[i] <= threshold[i]`` and goes to
    ``left[i]`` or ``right[i]``; a leaf points at itself, so ``depth`` steps take every row
    to its leaf in every tree. ``path[i]`` is what ``IsolationForest._compute_score_samples``
    adds for a row ending in leaf ``i``: its depth plus the average path length of its
    samples, minus one. This reads scikit-learn's private ``_decision_path_lengths``,
    ``_average_path_length_per_tree`` and ``_max_features``; the regression test fails if
    they change meaning.
    """

    trees: tuple[tuple[Any, Any, np.ndarray], ...]
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    path: np.ndarray
    depth: int

    @classmethod
    def of(cls, est: Any) -> _PackedForest:
        """Pack a fitted ``IsolationForest``."""
        subsample = est._max_features != est.n_features_in_
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "l", "r", "p")}
        roots, offset, depth, trees = [], 0, 0, []
        for tree, features, decision, average in zip(
            est.estimators_,
            est.estimators_features_,
            est._decision_path_lengths,
            est._average_path_length_per_tree,
            strict=True,
        ):
            t = tree.tree_
            own = np.arange(t.node_count) + offset
            leaf = t.children_left == -1
            feature = np.where(leaf, 0, t.feature)
            parts["f"].append(np.asarray(features)[feature] if subsample else feature)
            parts["t"].append(np.where(leaf, np.inf, t.threshold))
            parts["l"].append(np.where(leaf, own, t.children_left + offset))
            parts["r"].append(np.where(leaf, own, t.children_right + offset))
            parts["p"].append(decision + average - 1.0)
            trees.append((t, features if subsample else None, parts["p"][-1]))
            roots.append(offset)
            offset += t.node_count
            depth = max(depth, int(t.max_depth))
        return cls(
            trees=tuple(trees),
            roots=np.asarray(roots, dtype=np.intp),
            feature=np.concatenate(parts["f"]).astype(np.intp),
            threshold=np.concatenate(parts["t"]),
            left=np.concatenate(parts["l"]).astype(np.intp),
            right=np.concatenate(parts["r"]).astype(np.intp),
            path=np.concatenate(parts["p"]),
            depth=depth,
        )

    def depths(self, x: np.ndarray) -> np.ndarray:
        """Per row of ``x`` (float32), the sum over trees of its leaf's path length."""
        nodes = np.repeat(self.roots[None, :], x.shape[0], axis=0)
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self.depth):
            # float32 against float64, as the tree's C code compares them.
            go_left = x[rows, self.feature[nodes]] <= self.threshold[nodes]
            nodes = np.where(go_left, self.left[nodes], self.right[nodes])
        # Summed tree by tree from zero, as scikit-learn adds them: accumulate, not pairwise.
        out: np.ndarray = np.add.accumulate(self.path[nodes], axis=1)[:, -1]
        return np.ascontiguousarray(out)

    def depths_by_tree(self, x: np.ndarray) -> np.ndarray:
        """:meth:`depths`, one tree at a time, as ``_compute_score_samples`` adds them."""
        out: np.ndarray = np.zeros(x.shape[0], order="F")
        for tree, features, path in self.trees:
            out += path[tree.apply(x if features is None else x[:, features])]
        return out


class AbuseDetector(Family):
    """IsolationForest over the behaviour columns of ``client_windows``."""

    name = "abuse_detector"
    gate_metrics = frozenset(
        {
            "roc_auc",
            "average_precision",
            "precision_at_k",
            "recall_at_k",
            "k",
            "precision_at_threshold",
            "recall_at_threshold",
            "flagged_share",
            "n_windows",
            "abuse_share",
        }
    )
    Params = AbuseDetectorParams

    def train(self, frame: pd.DataFrame, params: Any, seed: int) -> AbuseModel:
        """Fit the forest on the training windows' behaviour columns.

        Raises:
            ValueError: a feature column is missing or mistyped, or the frame is empty.
        """
        from sklearn.ensemble import IsolationForest

        p = AbuseDetectorParams.model_validate(params)
        features = check_columns(frame, FEATURES)
        if features.empty:
            raise ValueError("abuse_detector: no training windows")
        estimator = IsolationForest(
            n_estimators=p.n_estimators,
            max_samples=min(p.max_samples, len(features)),
            contamination=p.contamination,
            random_state=seed,
        )
        estimator.fit(features)
        return AbuseModel(
            estimator=estimator,
            # offset_ is the contamination-quantile of score_samples on the training data.
            threshold=float(-estimator.offset_),
            top_fraction=p.top_fraction,
            contamination=p.contamination,
        )

    def evaluate(
        self, model: AbuseModel, holdout: pd.DataFrame, history: pd.DataFrame
    ) -> Evaluation:
        """Rank the holdout windows by anomaly score and compare with the incident labels.

        ``history`` is not needed: the labels are the baseline.

        Raises:
            ValueError: the holdout has only one class (ROC-AUC undefined), or bad columns.
        """
        checked = check_columns(holdout, {**FEATURES, LABEL: "int64"})
        if checked.empty:
            raise ValueError("abuse_detector: the holdout has no windows")
        y = checked[LABEL].to_numpy()
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"column {LABEL!r} must be 0 or 1")
        scores = model.scores(checked)
        flagged = scores > model.threshold
        positives = int(y.sum())
        if positives in (0, len(y)):
            raise ValueError(
                f"abuse_detector: ROC-AUC is undefined, the holdout's {len(y)} windows are all "
                f"{'abusive' if positives else 'normal'} ({LABEL}); it needs labelled incidents "
                "and normal traffic"
            )
        n_flagged = int(flagged.sum())
        metrics = {
            "roc_auc": m.roc_auc(y, scores),
            "average_precision": m.average_precision(y, scores),
            "precision_at_k": m.precision_at_k(y, scores, model.top_fraction),
            "recall_at_k": m.recall_at_k(y, scores, model.top_fraction),
            "k": float(m.top_k(len(y), model.top_fraction)),
            # At the deployed threshold: what is_abuse=True would have caught.
            "precision_at_threshold": float(y[flagged].mean()) if n_flagged else 0.0,
            "recall_at_threshold": float(y[flagged].sum() / positives),
            "flagged_share": n_flagged / len(y),
            "n_windows": float(len(y)),
            "abuse_share": positives / len(y),
        }
        figure = m.score_distribution_figure(scores, y, model.threshold)
        return Evaluation(metrics=metrics, figures={"score_distribution.png": figure})

    def save(self, model: AbuseModel, directory: Path) -> None:
        """Write ``model.skops`` (no pickle) and ``family.json``.

        The skops archive is written canonically (:func:`canonical_skops`): the same fitted
        estimator gives the same bytes, so a version's contents hash depends on the model, not
        on when or in which process it was saved.
        """
        import sklearn
        import skops.io

        (directory / MODEL_FILE).write_bytes(canonical_skops(skops.io.dumps(model.estimator)))
        index = {
            "family": self.name,
            "format": "skops",
            "model_file": MODEL_FILE,
            "features": FEATURES,
            "threshold": model.threshold,
            "top_fraction": model.top_fraction,
            "contamination": model.contamination,
            "sklearn_version": sklearn.__version__,
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

    def load(self, directory: Path) -> AbuseModel:
        """Load a model written by :meth:`save`.

        Raises:
            ValueError: the directory holds another family's model.
        """
        import skops.io

        index = json.loads((directory / INDEX_FILE).read_text())
        if index.get("family") != self.name:
            raise ValueError(f"{directory} holds a {index.get('family')!r} model, not {self.name}")
        estimator = skops.io.load(
            model_file(directory, index.get("model_file")), trusted=TRUSTED_TYPES
        )
        return AbuseModel(
            estimator=estimator,
            threshold=float(index["threshold"]),
            top_fraction=float(index["top_fraction"]),
            contamination=float(index["contamination"]),
        )

    def predict(self, model: AbuseModel, records: pd.DataFrame) -> pd.DataFrame:
        """``anomaly_score`` (higher = more anomalous) and ``is_abuse`` per record.

        Raises:
            ValueError: a feature column is missing or has the wrong type; names it.
        """
        features = check_columns(records, FEATURES)
        scores = model.scores(features) if len(features) else np.empty(0)
        return pd.DataFrame(
            {"anomaly_score": scores, "is_abuse": scores > model.threshold},
            index=records.index,
        )

    # Isolation scores sit between about 0.3 (ordinary) and 0.8 (isolated at once).
    output_buckets = {"anomaly_score": tuple(round(0.3 + 0.05 * i, 2) for i in range(11))}

    # IsolationForest costs about the same for 1 row as for 100 (a Python loop over its trees):
    # the serving app joins concurrent requests into one call.
    batchable = True

    def predict_columns(
        self, model: AbuseModel, columns: Mapping[str, Sequence[Any]]
    ) -> dict[str, Any]:
        """:meth:`predict` for plain columns, scored by :meth:`AbuseModel.fast_scores`.

        Raises:
            ValueError: as :meth:`predict`.
        """
        checked = column_arrays(columns, FEATURES)
        matrix = np.column_stack([checked[c].astype("float64") for c in FEATURES])
        scores = model.fast_scores(matrix)
        return {"anomaly_score": scores, "is_abuse": scores > model.threshold}

    experiment_metrics: ClassVar[dict[str, str]] = {
        "misclassified": "lower",
        "false_alarm": "lower",
    }
    label_column = LABEL

    def request_losses(self, answers: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
        """A wrong flag (0/1) against the incident label, and a flag on an innocent client.

        Raises:
            ValueError: the answers lack ``is_abuse``.
        """
        if "is_abuse" not in answers.columns:
            raise ValueError("abuse answers need an is_abuse column")
        flag = answers["is_abuse"].to_numpy(dtype=float)
        label = labels.to_numpy(dtype=float)
        return pd.DataFrame(
            {"misclassified": (flag != label).astype(float), "false_alarm": flag * (1 - label)},
            index=answers.index,
        )

    def input_columns(self) -> dict[str, str]:
        """The eight behaviour columns and their types."""
        return dict(FEATURES)

    def example_request(self, holdout: pd.DataFrame) -> list[dict[str, Any]]:
        """The first three holdout windows' behaviour columns, JSON-ready."""
        return json_records(holdout.head(3), FEATURES)

    def mlflow_model(self, model: AbuseModel, input_example: pd.DataFrame) -> MlflowModel:
        """The detector as the served model: a pyfunc of :meth:`load` and :meth:`predict`.

        It answers ``anomaly_score`` and ``is_abuse`` per row, as the endpoint does; the forest
        is the skops file that :meth:`save` writes (no pickle).
        """
        import sklearn
        import skops

        return pyfunc_model(
            self,
            model,
            input_example,
            [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
            {"threshold": model.threshold},
        )


FAMILY = AbuseDetector()
