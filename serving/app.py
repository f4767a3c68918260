"""The serving app: one FastAPI app for every model family, on the SageMaker container contract.

SageMaker (and the local endpoint) run this app as ``python -m serving serve``. The contract:

- ``GET /ping``: 200 once the model is loaded, with model name, version and family. A model
  that cannot be loaded (hash mismatch, missing file, unknown family, a load error) answers
  503 with ``{"status": "failed", "reason": ...}``, on every ping, for as long as the process
  runs: the process stays up instead of exiting, so the reason is one request away (the local
  endpoint puts it in its error; SageMaker reports the failed health check and the log carries
  the reason) rather than lost in a crash loop.
- ``POST /invocations``: JSON (``{"instances": [...]}``, a bare list of records, or MLflow's
  ``dataframe_records`` / ``dataframe_split``) or CSV with a header row; ``Accept: text/csv``
  answers CSV. Bad input of any kind is a 4xx whose body says what is wrong; predictions are
  ``{"predictions": [...], "model": ..., "version": ...}``.
- ``GET /execution-parameters``: what SageMaker batch transform asks before sending batches.

The model comes from ``MLOPS_MODEL_DIR`` (default ``/opt/ml/model``, where SageMaker unpacks
``model.tar.gz``). Nothing in it is trusted before :func:`adapters.package.verify_contents` has
checked ``contents.json`` against ``MLOPS_MODEL_CONTENTS_SHA256`` (from the version's manifest)
and every file against ``contents.json``. The family comes from ``contents.json``.

The app imports neither Prefect nor MLflow (only :mod:`adapters.package`, :mod:`adapters.layout`,
:mod:`adapters.store` and :mod:`core.families` with the family's own library), and nothing runs
at import time: :func:`create_app` builds the app, and the model loads when the server starts.
Request and response formats are :mod:`serving.codec`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.asgi import FastRoute, RawRequest, quiet_fastapi
from serving.batching import MicroBatcher
from serving.codec import (
    CSV,
    JSON,
    BadRequest,
    csv_header,
    csv_predictions,
    json_answer,
    parse_csv,
    parse_json_columns,
    read_body,
    request_format,
    response_format,
)
from serving.experiment_routing import MODEL_LATENCY_HEADER
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import FLUSH_SECONDS, ServingMetrics, mark_dead_workers, multiprocess_dir

log = logging.getLogger("serving")

_FAMILY_NAME = re.compile(r"^[a-z][a-z0-9_]+$")
INLINE_BYTES = 64 * 1024
"""A JSON body up to this size is parsed on the event loop (tens of microseconds); a larger
one in the thread pool, so that one big request never holds up /ping and small requests."""
INLINE_ROWS = 256
"""A fast-path prediction of up to this many rows runs on the event loop: a thread hop costs
more than the prediction (about 100 us for XGBoost on one row)."""


class ModelSettings(BaseSettings):
    """What to serve, read from the environment (the container's ``Environment`` on SageMaker).

    ``MLOPS_MODEL_CONTENTS_SHA256`` is required: without it nothing could be checked, so the app
    refuses to load (``/ping`` answers 503 naming the variable).
    """

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore", frozen=True)

    model_dir: Path = Field(default=Path("/opt/ml/model"), description="The unpacked model.tar.gz.")
    model_name: str | None = Field(
        default=None,
        max_length=128,
        description="Model name; must match contents.json when set. Default: contents.json's.",
    )
    model_version: str | None = Field(
        default=None, max_length=64, description="Store version (v{N}) reported with answers."
    )
    variant_name: str = Field(
        default="",
        max_length=128,
        description="The variant this process is, a label on its metrics (the local endpoint "
        "sets it; empty on SageMaker, whose metrics carry the variant themselves).",
    )
    model_contents_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of contents.json, from the manifest's lineage.model_contents_sha256.",
    )
    metrics: bool = Field(
        default=True,
        validation_alias=AliasChoices("MLOPS_SERVING_METRICS", "metrics"),
        description="Record Prometheus metrics and answer /metrics (off: for the benchmark's "
        "cost comparison, or where another layer measures).",
    )
    max_batch_records: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        validation_alias=AliasChoices("MLOPS_MAX_BATCH_RECORDS", "max_batch_records"),
        description="Most records one request may carry; more is a 413.",
    )
    max_body_bytes: int = Field(
        default=6 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        validation_alias=AliasChoices("MLOPS_MAX_BODY_BYTES", "max_body_bytes"),
        description="Largest request body (SageMaker real-time allows 6 MB); more is a 413.",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=2.0,
        validation_alias=AliasChoices("MLOPS_SERVING_BATCH_WAIT_MS", "batch_wait_ms"),
        description="Micro-batching of a batchable family: milliseconds the first request "
        "waits for others while the model is idle. 0 (the default): it goes at once, and "
        "batches form from what queues while the model is busy.",
    )
    batch_max_rows: int = Field(
        default=256,
        ge=1,
        le=100_000,
        validation_alias=AliasChoices("MLOPS_SERVING_BATCH_MAX_ROWS", "batch_max_rows"),
        description="Micro-batching: most rows joined into one model call (1: no batching).",
    )


class ServerSettings(BaseSettings):
    """How ``python -m serving serve`` runs uvicorn, from the environment.

    SageMaker's own variable names are honoured too: ``SAGEMAKER_BIND_TO_PORT`` (set when the
    container runs in an inference pipeline) and ``SAGEMAKER_MODEL_SERVER_WORKERS``.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field(
        default="0.0.0.0",
        validation_alias=AliasChoices("MLOPS_SERVING_HOST", "host"),
        description="Bind address; 0.0.0.0 in a container, 127.0.0.1 for the local endpoint.",
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("SAGEMAKER_BIND_TO_PORT", "MLOPS_SERVING_PORT", "port"),
        description="Port; SageMaker requires 8080 unless it sets SAGEMAKER_BIND_TO_PORT.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=AliasChoices(
            "MLOPS_SERVING_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS", "workers"
        ),
        description="uvicorn worker processes; each loads its own copy of the model.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info",
        validation_alias=AliasChoices("MLOPS_SERVING_LOG_LEVEL", "log_level"),
        description="uvicorn and app log level.",
    )
    access_log: bool = Field(
        default=False,
        validation_alias=AliasChoices("MLOPS_SERVING_ACCESS_LOG", "access_log"),
        description="Log every request (off by default: one line per prediction adds up).",
    )
    keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        le=3600,
        validation_alias=AliasChoices("MLOPS_SERVING_KEEP_ALIVE", "keep_alive_seconds"),
        description="Idle keep-alive; longer than a caller's pool keeps a connection, so the "
        "server never closes one a caller is about to reuse.",
    )
    graceful_seconds: int = Field(
        default=25,
        ge=1,
        le=600,
        validation_alias=AliasChoices("MLOPS_SERVING_GRACEFUL_SECONDS", "graceful_seconds"),
        description="On SIGTERM, time given to requests in flight (SageMaker kills after 30 s).",
    )


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded model and what the app reports about it."""

    name: str
    version: str | None
    family_name: str
    family: Any
    model: Any
    input_columns: dict[str, str]
    loaded_in_seconds: float
    optional_columns: dict[str, str] = field(default_factory=dict)

    @property
    def fast(self) -> bool:
        """Whether the family has its own :meth:`~core.families.Family.predict_columns`."""
        from core.families import Family

        return type(self.family).predict_columns is not Family.predict_columns

    def describe(self) -> dict[str, Any]:
        """Name, version and family, as ``/ping`` and every answer report them."""
        return {"model": self.name, "version": self.version, "family": self.family_name}


def load_model(settings: ModelSettings) -> LoadedModel:
    """Check every file of the model directory, then load it with its family.

    Raises:
        ModelLoadError: missing directory, a file that fails its sha256, a ``contents.json``
            that does not match the expected hash, a name mismatch, an unknown family, or an
            error from the family's loader.
    """
    from adapters.layout import PublishError
    from adapters.package import verify_contents
    from core.families import get_family

    start = time.perf_counter()
    model_dir = settings.model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    try:
        contents = verify_contents(model_dir, settings.model_contents_sha256)
    except (PublishError, OSError, ValueError) as exc:
        raise ModelLoadError(f"model files failed verification: {exc}") from exc
    family_name = contents.get("family")
    if not isinstance(family_name, str) or not _FAMILY_NAME.match(family_name):
        raise ModelLoadError(f"contents.json names no valid family: {family_name!r}")
    name = settings.model_name or str(contents.get("model") or family_name)
    if contents.get("model") and contents["model"] != name:
        raise ModelLoadError(
            f"the directory holds model {contents['model']!r}, not {settings.model_name!r}"
        )
    try:
        family = get_family(family_name)
    except ImportError as exc:
        raise ModelLoadError(f"unknown family {family_name!r}: {exc}") from exc
    try:
        model = family.load(model_dir)
    except Exception as exc:  # any loader failure is a model that cannot serve, with a reason
        raise ModelLoadError(f"{family_name} could not load {model_dir}: {exc!r}") from exc
    return LoadedModel(
        name=name,
        version=settings.model_version,
        family_name=family_name,
        family=family,
        model=model,
        input_columns=family.input_columns(),
        loaded_in_seconds=time.perf_counter() - start,
        optional_columns=family.optional_columns(),
    )


class _State:
    """What the app serves: a loaded model, or the reason there is none."""

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.failure: str | None = "starting"
        self.settings: ModelSettings | None = None
        # Families are plain Python objects; nothing promises that a model may predict from
        # two threads at once, so predictions take turns. Scale with workers (processes).
        self.predict_lock = threading.Lock()
        self.batcher: MicroBatcher | None = None
        self.metrics: ServingMetrics | None = None

    def load(self, settings: ModelSettings | None) -> None:
        """Load the model ``settings`` name (default: from the environment), or record why not."""
        try:
            self.settings = settings if settings is not None else ModelSettings()
            self.loaded = load_model(self.settings)
            self.failure = None
            if self.settings.metrics:
                self.metrics = ServingMetrics(
                    self.loaded.name, self.loaded.version or "", self.settings.variant_name
                )
                self.metrics.loaded(
                    self.loaded.family_name,
                    self.loaded.loaded_in_seconds,
                    self.loaded.family.output_buckets,
                )
            if self.loaded.family.batchable and self.settings.batch_max_rows > 1:
                loaded = self.loaded
                self.batcher = MicroBatcher(
                    lambda columns: _predict_columns(self, loaded, columns),
                    max_rows=self.settings.batch_max_rows,
                    max_wait=self.settings.batch_wait_ms / 1000,
                )
            log.info(
                "serving %s %s (%s), loaded in %.2fs",
                self.loaded.name,
                self.loaded.version,
                self.loaded.family_name,
                self.loaded.loaded_in_seconds,
            )
        except Exception as exc:  # reported on /ping; the process stays up to say why
            self.loaded = None
            self.failure = _load_failure(exc)
            # Its 503s are counted too (metrics on), under the names it was given.
            given = self.settings
            if given is not None and given.metrics:
                self.metrics = ServingMetrics(
                    given.model_name or "", given.model_version or "", given.variant_name
                )
            log.error("cannot serve: %s", self.failure)


class _Answer(Response):
    """A response that knows how many records it answers (0 for an error), for the metrics."""

    rows = 0


class _JSONAnswer(JSONResponse):
    rows = 0


async def _flush_metrics(state: _State) -> None:
    """Flush the recorded metrics every second (see :meth:`ServingMetrics.request`)."""
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        if state.metrics is not None:
            state.metrics.flush()


def _error(status: int, reason: str, state: _State) -> _JSONAnswer:
    body: dict[str, Any] = {"error": reason}
    if state.loaded is not None:
        body |= state.loaded.describe()
    return _JSONAnswer(body, status_code=status, headers=_identity(state))


def _identity(state: _State) -> dict[str, str]:
    if state.loaded is None:
        return {}
    headers = {"X-Model-Name": state.loaded.name, "X-Model-Family": state.loaded.family_name}
    if state.loaded.version:
        headers["X-Model-Version"] = state.loaded.version
    return headers


def create_app(settings: ModelSettings | None = None) -> FastAPI:
    """Build the serving app; the model loads when the server starts (lifespan).

    Args:
        settings: what to serve; default read from the environment at startup, so that a
            missing ``MLOPS_MODEL_CONTENTS_SHA256`` becomes a failed ``/ping``, not a crash.
    """
    state = _State()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Loading blocks startup on purpose: the server accepts requests only once it knows
        # whether it can serve, so /ping is never "up" with nothing loaded.
        shared = multiprocess_dir()
        if shared:
            mark_dead_workers(shared)
        state.load(settings)
        flusher = asyncio.create_task(_flush_metrics(state))
        try:
            yield
        finally:
            flusher.cancel()
            if state.batcher is not None:
                state.batcher.close()
            if state.metrics is not None:
                state.metrics.worker_exit()

    app = FastAPI(
        title="Intelli-Rate model server",
        description="SageMaker container contract: GET /ping, POST /invocations.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        **quiet_fastapi(),
    )
    app.state.serving = state

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error: {exc.__class__.__name__}: {exc}", state)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        """200 with name, version and family once loaded; 503 with the reason otherwise."""
        if state.loaded is None:
            return JSONResponse({"status": "failed", "reason": state.failure}, status_code=503)
        # The pid lets a caller that started this process tell it from another on the port.
        return JSONResponse(
            {"status": "ok", **state.loaded.describe(), "pid": os.getpid()},
            headers=_identity(state),
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: requests, latency, rows, the model, its answers."""
        body = state.metrics.exposition() if state.metrics is not None else b""
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    @app.get("/execution-parameters")
    async def execution_parameters() -> JSONResponse:
        """Batch transform's question before it sends work: one request at a time per worker."""
        limit = state.settings.max_body_bytes if state.settings else 6 * 1024 * 1024
        return JSONResponse(
            {
                "MaxConcurrentTransforms": 1,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": max(1, limit // (1024 * 1024)),
            }
        )

    async def invocations(_key: str, request: RawRequest) -> Response:
        """Predict for a batch of records; see :func:`_invocations`."""
        return await _invocations(state, request)

    # POST /invocations, the hot path, skips FastAPI's routing (see serving.asgi).
    app.add_middleware(
        FastRoute,
        match=lambda path: "" if path == "/invocations" else None,
        handler=invocations,
        on_error=lambda exc: _error(500, f"internal error: {exc.__class__.__name__}: {exc}", state),
    )
    return app


async def _invocations(state: _State, request: RawRequest) -> Response:
    """Predict, and record the request's metrics once it is answered."""
    start = time.perf_counter()
    metrics = state.metrics
    try:
        response = await _answer(state, request)
    except BaseException:
        if metrics is not None:
            metrics.request(500, time.perf_counter() - start)
        raise
    took = time.perf_counter() - start
    if metrics is not None:
        metrics.request(response.status_code, took, response.rows)
    # The model's own time, for the router's experiment capture: a shadow copy waits in the
    # mirror's queue, so the router's clock would compare the two paths, not the two models.
    response.headers[MODEL_LATENCY_HEADER] = f"{took * 1000.0:.3f}"
    return response


async def _answer(state: _State, request: RawRequest) -> _Answer | _JSONAnswer:
    """Predict for a batch of records (JSON or CSV in, JSON or CSV out)."""
    loaded = state.loaded
    settings = state.settings
    if loaded is None or settings is None:
        return _error(503, f"model not loaded: {state.failure}", state)
    try:
        fmt_in = request_format(request.headers.get("content-type"))
        fmt_out = response_format(request.headers.get("accept"))
        body = await read_body(request, settings.max_body_bytes)
        if not body.strip():
            raise BadRequest(400, "empty body: send at least one record")
        if fmt_in == "csv":
            predictions = await _predict_csv(state, loaded, settings, body)
        else:
            predictions = await _predict_json(state, loaded, settings, body)
    except BadRequest as exc:
        return _error(exc.status, exc.reason, state)
    if state.metrics is not None:
        state.metrics.outputs(predictions)
    return _predictions_response(predictions, fmt_out, loaded, state)


async def _predict_json(
    state: _State, loaded: LoadedModel, settings: ModelSettings, body: bytes
) -> dict[str, Any]:
    """The fast path: JSON to columns of plain values to the family's ``predict_columns``."""
    from starlette.concurrency import run_in_threadpool

    def parse() -> tuple[int, dict[str, list[Any]]]:
        rows, columns = parse_json_columns(
            body, tuple(loaded.input_columns), tuple(loaded.optional_columns)
        )
        _check_rows(rows, settings)
        return rows, columns

    rows, columns = parse() if len(body) <= INLINE_BYTES else await run_in_threadpool(parse)
    if state.batcher is not None and rows <= state.batcher.max_rows:
        return await state.batcher.predict(rows, columns)
    # Optional columns (the forecaster's is_holiday) may take the family's DataFrame path:
    # tens of milliseconds, so off the event loop.
    if loaded.fast and rows <= INLINE_ROWS and columns.keys() <= loaded.input_columns.keys():
        return _predict_columns(state, loaded, columns)
    return await run_in_threadpool(_predict_columns, state, loaded, columns)


async def _predict_csv(
    state: _State, loaded: LoadedModel, settings: ModelSettings, body: bytes
) -> dict[str, Any]:
    """CSV: the header checked first, then pandas and ``predict`` in the thread pool."""
    from starlette.concurrency import run_in_threadpool

    accepted = (*loaded.input_columns, *loaded.optional_columns)
    # A request naming far more columns than the model reads is refused before parsing: a
    # 6 MB header of 600,000 names took pandas 24 s (and /ping waited as long on the loop).
    csv_header(body, most=4 * len(accepted) + 64)

    def parse_and_predict() -> dict[str, Any]:
        frame = parse_csv(body, usecols=accepted)
        _check_rows(len(frame), settings)
        answer = _predict(state, loaded, frame)
        return {str(c): answer[c].to_numpy() for c in answer.columns}

    return await run_in_threadpool(parse_and_predict)


def _check_rows(rows: int, settings: ModelSettings) -> None:
    if rows == 0:
        raise BadRequest(400, "empty batch: send at least one record")
    limit = settings.max_batch_records
    if rows > limit:
        raise BadRequest(413, f"batch of {rows} records exceeds the maximum of {limit}")


def _predictions_response(
    predictions: dict[str, Any], fmt_out: str, loaded: LoadedModel, state: _State
) -> _Answer:
    """Predictions as CSV, or as JSON naming the model and version."""
    if fmt_out == "csv":
        import pandas as pd

        frame = pd.DataFrame(predictions)
        response = _Answer(csv_predictions(frame), media_type=CSV, headers=_identity(state))
    else:
        meta = loaded.describe()
        body = json_answer(predictions, {"model": meta["model"], "version": meta["version"]})
        response = _Answer(body, media_type=JSON, headers=_identity(state))
    response.rows = len(next(iter(predictions.values()))) if predictions else 0
    return response


def _load_failure(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"MLOPS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        return f"invalid serving environment: {problems}"
    return str(exc)


def _predict_columns(
    state: _State, loaded: LoadedModel, columns: dict[str, list[Any]]
) -> dict[str, Any]:
    """The family's fast path; bad values become a 400 naming the column."""
    rows = len(next(iter(columns.values()))) if columns else 0
    with state.predict_lock:
        try:
            out = loaded.family.predict_columns(loaded.model, columns)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            raise BadRequest(400, f"bad input: {exc}") from exc
    for name, values in out.items():
        if len(values) != rows:
            raise RuntimeError(f"{loaded.family_name} returned {len(values)} {name} for {rows}")
    return out


def _predict(state: _State, loaded: LoadedModel, frame: Any) -> Any:
    """Run the family's predict; bad values become a 400 naming the column."""
    with state.predict_lock:
        try:
            out = loaded.family.predict(loaded.model, frame)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            # The families raise ValueError naming the column; the others come from coercing
            # odd values (huge integers, mixed types) deeper down: still the caller's input.
            raise BadRequest(400, f"bad input: {exc}") from exc
    if len(out) != len(frame):
        raise RuntimeError(f"{loaded.family_name} returned {len(out)} rows for {len(frame)}")
    return out
