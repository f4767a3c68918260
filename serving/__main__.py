"""``python -m serving serve`` (what SageMaker runs) and ``python -m serving router``.

SageMaker starts a hosting container as ``docker run IMAGE serve``; the image's entry point is
``python -m serving``, so ``serve`` arrives here as the argument. ``train`` (what SageMaker
passes to a training container) runs :mod:`adapters.training.container`: the same image trains
a model as a SageMaker training job.
``check`` imports the server and every model family, looks up every library any module beside
it imports (:mod:`serving.image_check`), and prints what it found: the image build runs it, so a
missing library fails the build rather than the endpoint.
"""

from __future__ import annotations

import argparse
import sys


def serve() -> int:
    """Run the serving app under uvicorn; host, port and workers from the environment."""
    import uvicorn

    from serving.app import ServerSettings
    from serving.transport import HTTP

    server = ServerSettings()
    _share_metrics(server.workers)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        # uvloop and httptools: about twice asyncio's and h11's requests/s (BENCHMARKS.md).
        loop="uvloop",
        http=HTTP,
        host=server.host,
        port=server.port,
        workers=server.workers,
        log_level=server.log_level,
        access_log=server.access_log,
        timeout_keep_alive=server.keep_alive_seconds,
        timeout_graceful_shutdown=server.graceful_seconds,
        # One process serves one model: uvicorn's own headers would only add noise.
        server_header=False,
    )
    return 0


def _share_metrics(workers: int) -> None:
    """Give the workers a fresh directory to write their metrics to (see serving.metrics).

    This process is the workers' manager, so it owns the directory: the one named by
    ``PROMETHEUS_MULTIPROC_DIR`` (the local endpoint names one per variant), or a new temporary
    one when several workers would otherwise each count alone. Values of an earlier run are
    deleted before any worker starts. One worker without the variable keeps the faster
    in-process registry.
    """
    import os
    import tempfile

    from serving.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    path = os.environ.get(MULTIPROC_ENV)
    if not path and workers > 1:
        path = tempfile.mkdtemp(prefix="mlops-metrics-")
    if path:
        prepare_multiprocess_dir(path)
        os.environ[MULTIPROC_ENV] = path


def check() -> int:
    """Import the app, uvicorn and every family module; print JSON; 0 when all import.

    Also 1 when a module of the project, under the directory that holds this package, imports
    a library this interpreter lacks, wherever the import sits, or imports at module level a
    project module that directory lacks (the report names each and where).
    """
    import importlib
    import json
    import pkgutil
    import platform
    from pathlib import Path

    import httptools
    import orjson
    import uvicorn
    import uvloop

    import core.families
    import serving.app  # noqa: F401  (importing is the check)
    from core.families import Family
    from serving.image_check import missing_libraries, unresolved_project_modules

    app = Path(__file__).resolve().parents[1]
    families: dict[str, str] = {}
    for module in pkgutil.iter_modules(core.families.__path__):
        try:
            found = getattr(importlib.import_module(f"core.families.{module.name}"), "FAMILY", None)
        except ImportError as exc:
            families[module.name] = f"cannot import: {exc}"
            continue
        if isinstance(found, Family):
            families[module.name] = "ok"
    report = {
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        # The fast server setup (serving.transport, serving.codec): the build fails without it.
        "uvloop": uvloop.__version__,
        "httptools": httptools.__version__,
        "orjson": orjson.__version__,
        "families": families,
        "missing_libraries": missing_libraries(app),
        "missing_project_modules": unresolved_project_modules(app),
    }
    print(json.dumps(report))  # noqa: T201  (this JSON line is the command's output)
    ok = families and all(v == "ok" for v in families.values())
    if ok and not report["missing_libraries"] and not report["missing_project_modules"]:
        return 0
    # Also on stderr: a build tool that keeps only the failing step's errors still shows why.
    print(f"serving check failed: {json.dumps(report)}", file=sys.stderr)  # noqa: T201
    return 1


def router(host: str, port: int, state_file: str, log_level: str) -> int:
    """Run the local endpoint's router (see :mod:`serving.router`)."""
    from pathlib import Path

    import uvicorn

    from serving.router import create_router
    from serving.transport import HTTP

    uvicorn.run(
        create_router(Path(state_file)),
        loop="uvloop",
        http=HTTP,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run ``serve`` or ``router``."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="Serve the model in $MLOPS_MODEL_DIR (SageMaker contract).")
    commands.add_parser("train", help="Train from /opt/ml (SageMaker training-job contract).")
    commands.add_parser("check", help="Import the server and every family; print JSON.")
    route = commands.add_parser("router", help="Run the local endpoint's router.")
    route.add_argument("--host", default="127.0.0.1", help="Bind address.")
    route.add_argument("--port", type=int, default=8080, help="Port.")
    route.add_argument("--state-file", required=True, help="routes.json to follow.")
    route.add_argument("--log-level", default="info", help="uvicorn log level.")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve()
    if args.command == "check":
        return check()
    if args.command == "router":
        return router(args.host, args.port, args.state_file, args.log_level)
    from adapters.training.container import main as train

    return train()


if __name__ == "__main__":
    sys.exit(main())
