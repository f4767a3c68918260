"""Image benchmark: sizes, build times, start to first ``/ping``, and the image's server under wrk.

``make bench-image`` runs this. It builds both images with ``docker/build-images.sh`` three
ways: cold (every layer again, ``MLOPS_IMAGE_NO_CACHE=1``; packages come from the build's
download cache, so a machine's very first build also waits for about 300 MB from PyPI), cached
(nothing changed) and after a code change (one project file touched: the dependency layers
stay). It then starts the serving image as SageMaker does (:mod:`tests.fixtures.images`) on
each family's model and times the start to the first ``/ping`` 200, ``--rounds`` times; and
runs ``wrk`` (1 thread, 16 connections, 1-row and 100-row JSON requests) against the image's
process and the local endpoint's process (``python -m serving serve`` from the checkout) on the
same model, alternating, so the ratio compares them under the same machine load. The figures
go to ``BENCHMARKS.md`` between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_serving import LUA, ensure_wrk, request_body, write_section, wrk_cpu
from measured_on import measured_on

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("abuse_detector", "limit_optimiser", "traffic_forecaster")
MARK_START = "<!-- bench-image:start -->"
MARK_END = "<!-- bench-image:end -->"


def build(label: str, **env: str) -> dict[str, dict[str, Any]]:
    """Run the build script; per image its size (bytes) and seconds."""
    from tests.fixtures.images import build_images

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        images = build_images()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result = {
        name: {"size": i.size, "seconds": i.seconds, "ref": i.ref} for name, i in images.items()
    }
    print(json.dumps({"build": label, **result}), flush=True)  # noqa: T201
    return result


def start_times(image: str, rounds: int, base: Path) -> dict[str, list[float]]:
    """Seconds from starting the container to its first ``/ping`` 200, per family."""
    from adapters.package import make_tarball
    from tests.fixtures.images import serve, unpack
    from tests.fixtures.serving import build_model_dir

    times: dict[str, list[float]] = {}
    for family in FAMILIES:
        tiny = build_model_dir(family, base / family / "model")
        model_dir = unpack(
            make_tarball(tiny.model_dir, base / family / "model.tar.gz"),
            base / family / "opt-ml-model",
        )
        env = {
            "MLOPS_MODEL_NAME": family,
            "MLOPS_MODEL_VERSION": "v1",
            "MLOPS_MODEL_CONTENTS_SHA256": tiny.contents_sha256,
        }
        for _ in range(rounds):
            start = time.monotonic()
            running = serve(image, model_dir, env)
            times.setdefault(family, []).append(round(time.monotonic() - start, 2))
            running.container.stop()
    return times


def throughput(image: str, rounds: int, seconds: int, base: Path) -> list[dict[str, Any]]:
    """Wrk against the image's process and the local process on one model, alternating."""
    import httpx

    from adapters.endpoints.local.processes import free_port
    from adapters.package import make_tarball
    from tests.fixtures.images import serve, unpack
    from tests.fixtures.serving import build_model_dir, training_frame

    wrk = ensure_wrk()
    lua = base / "post.lua"
    lua.write_text(LUA)
    rows_out: list[dict[str, Any]] = []
    family = "limit_optimiser"
    tiny = build_model_dir(family, base / "tp" / "model")
    model_dir = unpack(
        make_tarball(tiny.model_dir, base / "tp" / "model.tar.gz"), base / "tp" / "opt-ml-model"
    )
    env = {
        "MLOPS_MODEL_NAME": family,
        "MLOPS_MODEL_VERSION": "v1",
        "MLOPS_MODEL_CONTENTS_SHA256": tiny.contents_sha256,
    }
    image_proc = serve(image, model_dir, env)
    port = free_port()
    local = subprocess.Popen(
        [sys.executable, "-m", "serving", "serve"],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "MLOPS_MODEL_DIR": str(tiny.model_dir),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "MPLBACKEND": "Agg",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    local_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{local_url}/ping", trust_env=False, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        frame = training_frame(family)
        for rows in (1, 100):
            body = base / f"body-{rows}.json"
            body.write_bytes(request_body(family, frame, rows))
            for round_ in range(rounds):
                for where, url in (("image", image_proc.url), ("local", local_url)):
                    summary, _ = wrk_cpu(wrk, f"{url}/invocations", body, seconds, lua)
                    rps = summary["requests"] / (summary["duration_us"] / 1e6)
                    errors = sum(
                        summary[k] for k in ("status", "connect", "read", "write", "timeout")
                    )
                    row = {
                        "where": where,
                        "rows": rows,
                        "round": round_,
                        "requests_per_s": round(rps, 1),
                        "p99_ms": summary["p99_us"] / 1000,
                        "errors": errors,
                        "load": round(os.getloadavg()[0], 2),
                    }
                    print(json.dumps(row), flush=True)  # noqa: T201
                    rows_out.append(row)
    finally:
        image_proc.container.stop()
        local.terminate()
        local.wait(timeout=30)
    return rows_out


def render(
    builds: dict[str, dict[str, dict[str, Any]]],
    starts: dict[str, list[float]],
    runs: list[dict[str, Any]],
    rounds: int,
    seconds: int,
) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        MARK_START,
        "## Images (`make bench-image`)",
        "",
        "Measured {date} on {cpu} (load {load}, Python {python}) by `make bench-image` ".format(
            **measured_on()
        )
        + f"(`bench/bench_image.py --rounds {rounds} --seconds {seconds}`).",
        "",
        "Sizes as buildah reports them (uncompressed); build times of `docker/build-images.sh` "
        "on a base already made (cold: every step again, packages from the build's download "
        "cache; cached: nothing changed; code change: one file of `serving/` touched).",
        "",
        "| image | size | cold build | cached build | after a code change |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("serving", "flow-runner"):
        size = builds["cold"][name]["size"] / 1e6
        lines.append(
            f"| {name} | {size:,.0f} MB | {builds['cold'][name]['seconds']:.0f} s | "
            f"{builds['cached'][name]['seconds']:.1f} s | "
            f"{builds['code change'][name]['seconds']:.0f} s |"
        )
    lines += [
        "",
        "Start of the serving image (`buildah run` of its entry point with `serve`) to "
        "the first `/ping` 200, seconds over "
        f"{rounds} starts per family (target 5 s):",
        "",
        "| family | median | max |",
        "|---|---:|---:|",
    ]
    for family, values in starts.items():
        lines.append(f"| {family} | {statistics.median(values):.2f} | {max(values):.2f} |")
    lines += [
        "",
        "`wrk` against the image's process and the local endpoint's process on the same "
        "limit_optimiser model, one worker each, alternating "
        f"({rounds} rounds of {seconds} s; medians):",
        "",
        "| rows per request | image req/s | local req/s | ratio | image p99 ms | "
        "local p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in (1, 100):
        pick = {
            w: [r for r in runs if r["rows"] == rows and r["where"] == w]
            for w in ("image", "local")
        }
        rps = {w: statistics.median(r["requests_per_s"] for r in v) for w, v in pick.items()}
        p99 = {w: statistics.median(r["p99_ms"] for r in v) for w, v in pick.items()}
        errors = sum(r["errors"] for v in pick.values() for r in v)
        lines.append(
            f"| {rows} | {rps['image']:,.0f} | {rps['local']:,.0f} | "
            f"{rps['image'] / rps['local']:.2f} | {p99['image']:.1f} | "
            f"{p99['local']:.1f} | {errors} |"
        )
    lines += ["", MARK_END]
    return "\n".join(lines)


def main() -> int:
    """Build, start, load; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    builds = {"cold": build("cold", MLOPS_IMAGE_NO_CACHE="1"), "cached": build("cached")}
    touched = ROOT / "serving" / "__init__.py"
    original = touched.read_text()
    try:
        touched.write_text(original + "\n# bench-image: a code change\n")
        builds["code change"] = build("code change")
    finally:
        touched.write_text(original)
    image = builds["cached"]["serving"]["ref"]
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        starts = start_times(image, args.rounds, Path(tmp))
        runs = throughput(image, args.rounds, args.seconds, Path(tmp))
    write_section(render(builds, starts, runs, args.rounds, args.seconds), MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
