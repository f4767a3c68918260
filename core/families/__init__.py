"""Model families behind one interface, so flows and the gate never branch on the family.

A family is a module ``core/families/<family>.py`` that defines ``FAMILY``, an instance of a
:class:`Family` subclass. Adding a fourth model takes that module and one
``configs/models/<name>.yaml``. Families import neither Prefect nor MLflow: the serving app and
notebooks use them directly, and a family says how MLflow should log it
(:meth:`Family.mlflow_model`) while :mod:`adapters.registry` does the logging.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Evaluation:
    """What evaluating one model on one holdout produced.

    Attributes:
        metrics: metric name -> value; the gate reads these by name.
        figures: file name (``*.png``) -> matplotlib figure, logged to MLflow.
    """

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class TrainingSummary:
    """What a training decided beyond the holdout metrics, for MLflow and the gate artifact.

    Attributes:
        params: logged as run parameters (a forecaster's chosen candidate per service).
        metrics: logged as run metrics (backtest scores).
        tables: name -> rows (JSON-ready dicts), logged as ``<name>.json`` tables and copied
            into the gate record.
    """

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class MlflowModel:
    """How MLflow should log a family's model: the flavour and its arguments.

    Attributes:
        flavour: the MLflow flavour module (``sklearn``, ``xgboost``, ``pyfunc``).
        model: the object the flavour logs (the estimator); ``None`` for a ``pyfunc``.
        input_example: request rows as the logged model takes them.
        input_schema: request columns and their types (as :meth:`Family.input_columns`); when
            set, the signature's inputs are exactly these, as in ``schema.json``.
        pip_requirements: pinned libraries the logged model needs.
        metadata: stored in the MLmodel file (the family's name and its settings).
        options: further ``log_model`` keyword arguments of the flavour.
        output_example: the model's answer to ``input_example``, where MLflow cannot run the
            model to infer the signature (a loader-module pyfunc).
        loader_module: ``pyfunc`` only: the module whose ``_load_pyfunc(data_path)`` loads it.
        code_modules: ``pyfunc`` only: the modules shipped with the model as code.
        save: ``pyfunc`` only: writes the model directory (the pyfunc's data) into a folder.
    """

    flavour: str
    model: Any
    input_example: pd.DataFrame
    pip_requirements: list[str]
    metadata: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    output_example: pd.DataFrame | None = None
    input_schema: dict[str, str] | None = None
    loader_module: str | None = None
    code_modules: tuple[str, ...] = ()
    save: Callable[[Path], None] = lambda directory: None


class Family(ABC):
    """One model family: how to train, evaluate, save, load and predict.

    Every method is a plain function of its arguments: no I/O beyond the directory given,
    no global state, deterministic for a given seed.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    """Strict pydantic model of the family's hyperparameters (``params:`` in the config)."""
    gate_metrics: ClassVar[frozenset[str]]
    """Metrics :meth:`evaluate` always reports: the names a config's ``gate.metrics`` may use
    (checked when the config loads, so a misspelt metric cannot silently reject every model)."""

    @abstractmethod
    def train(self, frame: pd.DataFrame, params: Any, seed: int) -> Any:
        """Fit a model on ``frame`` (the training window) and return it."""

    @abstractmethod
    def evaluate(self, model: Any, holdout: pd.DataFrame, history: pd.DataFrame) -> Evaluation:
        """Score ``model`` on ``holdout``; ``history`` is the data before it (for baselines).

        The champion and the challenger are both scored with this on the same holdout.
        """

    def backtest(self, frame: pd.DataFrame, params: Any, seed: int) -> dict[str, float]:
        """Optional extra diagnostics on the training window (logged, not gated)."""
        return {}

    def summary(self, model: Any) -> TrainingSummary:
        """What training decided (a model chosen per series, its scores); empty by default."""
        return TrainingSummary()

    @abstractmethod
    def save(self, model: Any, directory: Path) -> None:
        """Write the model's files into ``directory`` (which exists and is empty)."""

    @abstractmethod
    def load(self, directory: Path) -> Any:
        """Load a model written by :meth:`save`."""

    @abstractmethod
    def predict(self, model: Any, records: pd.DataFrame) -> pd.DataFrame:
        """Predict for ``records`` (columns as in :meth:`input_columns`).

        Raises:
            ValueError: a required column is missing or has the wrong type; the message
                names it (the serving app turns this into a 400).
        """

    experiment_metrics: ClassVar[dict[str, str]] = {}
    """Per-request metrics an online experiment may use, and which way is better (``lower``):
    computed by :meth:`request_losses` from a captured answer and its late label. The first is
    the default success metric; a config's ``experiment.metric`` and guardrails name these."""
    label_column: ClassVar[str | None] = None
    """The dataset column holding the late label of a request (joined on the dataset's key)."""
    answer_column: ClassVar[str | None] = None
    """For a regressor: the answer column the default :meth:`request_losses` compares."""

    def request_losses(self, answers: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
        """One row per answered request: a column per :attr:`experiment_metrics` name.

        The default, for a family answering a number in :attr:`answer_column`: ``abs_error``
        and ``abs_pct_error`` (against ``max(|label|, 1)``, so a zero label stays finite).

        Args:
            answers: the model's answers (:meth:`predict`'s columns), one row per request.
            labels: the request's label (:attr:`label_column`), aligned with ``answers``.

        Raises:
            ValueError: the family defines no experiment metrics, or an answer column is missing.
        """
        column = self.answer_column
        if column is None:
            raise ValueError(f"the {self.name} family defines no experiment metrics")
        if column not in answers.columns:
            raise ValueError(f"{self.name} answers need a {column} column")
        actual = labels.to_numpy(dtype=float)
        error = np.abs(answers[column].to_numpy(dtype=float) - actual)
        return pd.DataFrame(
            {"abs_error": error, "abs_pct_error": error / np.maximum(np.abs(actual), 1.0)},
            index=answers.index,
        )

    output_buckets: ClassVar[Mapping[str, tuple[float, ...]]] = {}
    """Histogram buckets of numeric output columns for the serving metrics (``/metrics``'s
    ``mlops_output_value``), by column; a column not named gets a 1-2-5 scale up to 100,000."""

    batchable: ClassVar[bool] = False
    """Whether the serving app may join concurrent requests into one :meth:`predict_columns`
    call: true for a model with a fixed cost per call (one row costs about what 100 do) whose
    rows are predicted independently, so that a joined batch answers each row as alone."""

    def predict_columns(self, model: Any, columns: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """The serving fast path: :meth:`predict` on columns of plain values, without pandas.

        ``columns`` maps each request column (:meth:`input_columns`, plus any of
        :meth:`optional_columns` sent) to one value per record, as parsed from JSON. The answer
        is :meth:`predict`'s, column by column as numpy arrays, equal to the last bit: a
        regression test compares the two per family. This default builds the DataFrame and
        calls :meth:`predict`; a family overrides it where its library takes arrays.

        Raises:
            ValueError: as :meth:`predict`.
        """
        frame = pd.DataFrame({c: list(v) for c, v in columns.items()})
        answer = self.predict(model, frame)
        return {str(c): answer[c].to_numpy() for c in answer.columns}

    def optional_columns(self) -> dict[str, str]:
        """Request columns a caller may add to :meth:`input_columns` (default: none)."""
        return {}

    @abstractmethod
    def input_columns(self) -> dict[str, str]:
        """Request columns and their types (``float64``, ``int64``, ``string``, ``timestamp``)."""

    @abstractmethod
    def example_request(self, holdout: pd.DataFrame) -> list[dict[str, Any]]:
        """A few JSON-ready request records taken from ``holdout`` (the smoke-test payload)."""

    @abstractmethod
    def mlflow_model(self, model: Any, input_example: pd.DataFrame) -> MlflowModel:
        """How MLflow logs ``model`` (flavour, example, requirements), for the registry.

        A family returns :func:`pyfunc_model`, so that the logged model is the served one.
        """


CONTENTS_FILE = "contents.json"
"""The published model directory's list of files (written by :mod:`adapters.package`)."""


def model_file(directory: Path, name: Any) -> Path:
    """The file ``name`` (from a model's ``family.json``) inside ``directory``, checked.

    ``family.json`` travels with the model, so its file names are input: a name must be
    relative, resolve inside ``directory`` (no ``..``, no link out), name a regular file and,
    in a published directory, be one that ``contents.json`` lists (hence hash-checked).

    Raises:
        ValueError: the name fails one of these checks; the message names it.
    """
    root = Path(directory).resolve()
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise ValueError(f"{directory}: model file {name!r} must be a relative path")
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"{directory}: model file {name!r} is outside the model directory")
    if (root / name).is_symlink() or not path.is_file():
        raise ValueError(f"{directory}: model file {name!r} is not a regular file")
    contents = root / CONTENTS_FILE
    if contents.is_file():
        listed = json.loads(contents.read_text()).get("files", {})
        if path.relative_to(root).as_posix() not in listed:
            raise ValueError(f"{directory}: model file {name!r} is not listed in {CONTENTS_FILE}")
    return path


def get_family(name: str) -> Family:
    """Return the ``FAMILY`` object of ``core/families/<name>.py``.

    Raises:
        ImportError: no such family module, or it defines no ``FAMILY``.
    """
    module = importlib.import_module(f"core.families.{name}")
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family):
        raise ImportError(f"core.families.{name} defines no FAMILY of type Family")
    return family


def check_columns(records: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Return ``records`` restricted to ``columns`` and coerced to their types.

    A numeric column refuses booleans (``true`` is not a count) and non-finite values
    (``Infinity``, ``1e309``): a model would score them without complaint.

    Raises:
        ValueError: a column is missing or a value cannot be coerced; names the column.
    """
    missing = [c for c in columns if c not in records.columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    out: dict[str, pd.Series] = {}
    for col, kind in columns.items():
        series = records[col]
        if kind in _NUMERIC and _has_bool(series):
            raise ValueError(f"column {col!r} must be {kind}: got a boolean")
        try:
            if kind == "float64":
                out[col] = pd.to_numeric(series, errors="raise").astype("float64")
            elif kind == "int64":  # astype alone turns 7.9 into 7 and 1e20 into -2**63
                num = pd.to_numeric(series, errors="raise")
                real = num[np.isfinite(num)] if num.dtype.kind == "f" else num[:0]
                if len(bad := real[real % 1 != 0]):
                    raise ValueError(f"{float(bad.iloc[0])!r} is not a whole number")
                if len(bad := real[real.abs() >= 2**63]):
                    raise ValueError(f"{float(bad.iloc[0])!r} is out of the int64 range")
                out[col] = num.astype("int64")
            elif kind == "timestamp":
                out[col] = pd.to_datetime(series, errors="raise")
            else:
                out[col] = series.astype("string")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"column {col!r} must be {kind}: {exc}") from exc
        if out[col].isna().any():
            raise ValueError(f"column {col!r} has null values")
        if kind == "float64" and not np.isfinite(out[col].to_numpy()).all():
            raise ValueError(f"column {col!r} must be finite: it holds an infinity")
    return pd.DataFrame(out, index=records.index)


_NUMERIC = ("float64", "int64")
_PLAIN_ISO = re.compile(r"^(19|20)\d\d-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?)?$")
"""A timestamp without a zone, 1900-2099 (inside ``datetime64[ns]``): read without pandas."""


def _one_plain_iso_format(raw: Sequence[str]) -> bool:
    """Whether every value is a plain ISO timestamp written like the first.

    pandas infers the format from the first value and refuses the others when they differ
    (``2025-03-03T01:00`` after ``2025-03-03 01:00:00``): such a column keeps pandas' answer.
    """
    if not raw:
        return False
    first = raw[0]
    size, sep = len(first), first[10:11]
    return all(len(v) == size and v[10:11] == sep and _PLAIN_ISO.match(v) for v in raw)


def _has_bool(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series.dtype):
        return True
    return series.dtype == object and any(type(v) is bool for v in series)


def column_arrays(values: Mapping[str, Sequence[Any]], columns: dict[str, str]) -> dict[str, Any]:
    """``columns`` of ``values`` (column -> one value per record) as typed numpy arrays.

    The serving fast path: the same coercions and refusals as :func:`check_columns`, without a
    DataFrame when every value of a column already has the column's Python type (numbers for
    numbers, strings for strings), which is what a JSON request holds. Any other column (text
    digits, nulls, timestamps) goes through :func:`check_columns`, so the answer is the same.

    Returns:
        Column -> array: ``float64``, ``int64``, ``object`` (strings) or ``datetime64[ns]``.

    Raises:
        ValueError: a column is missing or a value cannot be coerced; names the column.
    """
    missing = [c for c in columns if c not in values]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    out: dict[str, Any] = {}
    for col, kind in columns.items():
        raw = values[col]
        types = set(map(type, raw))
        if kind == "float64" and types <= {float, int}:
            array = np.array(raw, dtype="float64")
            if not np.isfinite(array).all():
                if np.isnan(array).any():
                    raise ValueError(f"column {col!r} has null values")
                raise ValueError(f"column {col!r} must be finite: it holds an infinity")
            out[col] = array
        elif kind == "int64" and types <= {int}:
            out[col] = np.array(raw, dtype="int64")
        elif kind == "string" and types <= {str}:
            out[col] = np.array(raw, dtype=object)
        elif kind == "timestamp" and types <= {str} and _one_plain_iso_format(raw):
            # Naive ISO 8601 of this era, one format: numpy reads the instants pandas reads.
            out[col] = np.array(raw, dtype="datetime64[ns]")
        else:
            checked = check_columns(pd.DataFrame({col: list(raw)}), {col: kind})[col]
            out[col] = checked.to_numpy(dtype=object) if kind == "string" else checked.to_numpy()
    return out


def json_records(records: pd.DataFrame, columns: dict[str, str]) -> list[dict[str, Any]]:
    """``records`` as JSON-ready dicts of ``columns`` (after :func:`check_columns`).

    Timestamps become ISO 8601 strings and numbers plain Python ``int``/``float``, so the
    result can go straight into ``json.dumps`` (a smoke-test payload, an MLflow input example).

    Raises:
        ValueError: as :func:`check_columns`.
    """
    checked = check_columns(records, columns)
    out: list[dict[str, Any]] = []
    for row in checked.itertuples(index=False, name=None):
        record: dict[str, Any] = {}
        for (col, kind), value in zip(columns.items(), row, strict=True):
            if kind == "timestamp":
                record[col] = pd.Timestamp(value).isoformat()
            elif kind == "float64":
                record[col] = float(value)
            elif kind == "int64":
                record[col] = int(value)
            else:
                record[col] = str(value)
        out.append(record)
    return out


def pyfunc_model(
    family: Family,
    model: Any,
    input_example: pd.DataFrame,
    pip_requirements: list[str],
    metadata: dict[str, Any],
    code_modules: tuple[str, ...] = (),
) -> MlflowModel:
    """The family's own ``load`` + ``predict`` as a loader-module MLflow pyfunc.

    The model directory that :meth:`Family.save` writes is the pyfunc's data, and
    :mod:`core.families.pyfunc` its loader, so ``mlflow.pyfunc.load_model`` and
    ``mlflow models serve`` answer with :meth:`Family.predict`: the columns, types and outputs
    of the serving app, by construction. The signature's inputs are
    :meth:`Family.input_columns` (``schema.json``'s), its outputs those of ``predict``.
    The code shipped with the model is the loader, the family's module and every project module
    they import (:func:`shipped_modules`), plus ``code_modules`` for one imported by name at
    run time; loading then needs the pinned libraries, not this project.
    """
    import pydantic

    columns = family.input_columns()
    # The example as the request carries it (JSON: timestamps as ISO strings), typed as in
    # the pandas frame a client builds from it.
    checked = pd.DataFrame(json_records(input_example, columns), columns=list(columns))
    module = type(family).__module__
    return MlflowModel(
        flavour="pyfunc",
        model=None,
        input_example=checked,
        output_example=family.predict(model, checked),
        input_schema=columns,
        pip_requirements=[
            f"pandas=={pd.__version__}",
            f"numpy=={_version('numpy')}",
            f"pydantic=={pydantic.__version__}",
            *pip_requirements,
        ],
        metadata={"family": family.name, **metadata},
        loader_module="core.families.pyfunc",
        code_modules=shipped_modules("core.families.pyfunc", module, *code_modules),
        save=lambda directory: family.save(model, directory),
    )


def shipped_modules(*roots: str) -> tuple[str, ...]:
    """``roots`` and the project modules they import, transitively, with their packages.

    Read from the source with ``ast`` (nothing is imported that is not already), every import
    counted, inside functions too: a model served by ``mlflow models serve`` has only these
    files, and a module left out fails there with ``ModuleNotFoundError``. Only this package's
    modules are followed: ``core`` imports nothing else of the project.
    """
    top = __name__.split(".")[0]
    found: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {name!r} to ship")
        found.add(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        for imported in _imports_of(Path(spec.origin)):
            if imported.split(".")[0] == top and _is_module(imported):
                pending.append(imported)
    return tuple(sorted(found))


def _imports_of(path: Path) -> set[str]:
    """Absolute names that ``path`` imports, inside functions too.

    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a
    module or a name in ``a``).
    """
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


def _version(package: str) -> str:
    return str(importlib.import_module(package).__version__)
