"""Serving benchmark: the local endpoint under wrk, per family, direct and through the router.

``make bench-serving`` runs this. It trains each family with its embedded default config
(``configs/models/*.yaml`` params, the project's data generator), publishes it to a temporary
local store, deploys it with the local endpoint target (router + one serving process per
model, exactly what ``make run`` starts), then drives each serving process directly and each
model through the router with ``wrk`` (its own process, one thread, 16 keep-alive connections)
for 1-row and 100-row JSON requests. It writes requests/s, p50, p99, error counts and the CPU
each process used into ``BENCHMARKS.md`` between this benchmark's markers.

``--baseline REV`` runs the same benchmark on another commit (a temporary ``git worktree``;
``--baseline-python`` names an interpreter with that commit's libraries) right after, and adds
the ratios. The figures are noisy on a
shared machine: the load average is written beside them.

wrk comes from the distribution's packages (``apt-get install -y wrk`` when missing): a C load
generator with a Lua hook, light enough to share two cores with the servers; a Python client
could not generate 1,500 requests/s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from measured_on import measured_on

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("abuse_detector", "limit_optimiser", "traffic_forecaster")
MARK_START = "<!-- bench-serving:start -->"
MARK_END = "<!-- bench-serving:end -->"
COST_START = "<!-- bench-metrics-cost:start -->"
COST_END = "<!-- bench-metrics-cost:end -->"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Run:
    """One wrk run's figures."""

    family: str
    path: str  # "direct" or "router"
    rows: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrk_cpu: float  # share of one core
    server_cpu: float  # share of one core, serving process + router
    load: float
    cpu_ms: float = 0.0  # server CPU per request: what a quiet core would sustain, inverted


def ensure_wrk() -> str:
    """The path of ``wrk``, installed from the distribution's packages when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(apt, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(apt, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and apt-get could not install it")
    return found


def train_and_publish(store: Any, family: str, staging: Path) -> Any:
    """Train ``family`` with its default config on generated data; publish it to ``store``."""
    from adapters.package import write_contents
    from core import synth
    from core.config import load_model_config
    from core.families import get_family
    from tests.fixtures.serving import TinyModel, publish_tiny

    config = load_model_config(ROOT / "configs" / "models" / f"{family}.yaml")
    impl = get_family(family)
    start = datetime(2025, 3, 3)
    if family == "abuse_detector":
        frame = synth.generate("client_windows", start, 7, n_clients=100, seed=config.seed)
    elif family == "limit_optimiser":
        frame = synth.generate("client_limits", start, 28, n_clients=200, seed=config.seed)
    else:
        frame = synth.generate("service_traffic", start, 28, n_services=5, seed=config.seed)
    params = impl.Params.model_validate({**config.params, **_quick(family)})
    model = impl.train(frame, params, config.seed)
    model_dir = staging / "model"
    model_dir.mkdir(parents=True)
    impl.save(model, model_dir)
    sha = write_contents(model_dir, family, family)
    tiny = TinyModel(
        family, model_dir, sha, impl.example_request(frame.tail(500)), impl.input_columns()
    )
    return publish_tiny(store, tiny, staging / "publish"), frame


def _quick(family: str) -> dict[str, Any]:
    # Trained as configured: the forecaster's backtest chooses what serves (on this generated
    # data Prophet, on the real series in tests/data mostly a statistical candidate).
    return {}


def request_body(family: str, frame: Any, rows: int) -> bytes:
    """A JSON request of ``rows`` records taken from the training frame."""
    from core.families import get_family, json_records

    impl = get_family(family)
    sample = frame.sample(n=rows, random_state=1) if rows > 1 else frame.tail(1)
    return json.dumps({"instances": json_records(sample, impl.input_columns())}).encode()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and their children (uvicorn workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def wrk_cpu(
    wrk: str, url: str, body: Path, seconds: int, lua: Path, connections: int = 16
) -> tuple[dict[str, Any], float]:
    """One wrk run: its summary, and its own CPU share (from the child's rusage)."""
    env = {**os.environ, "BENCH_BODY": str(body)}
    cmd = [wrk, "-t1", f"-c{connections}", "--timeout", "5s", "-s", str(lua), f"-d{seconds}s", url]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err[-500:]} {out[-500:]}")
    return json.loads(lines[-1]), (usage.ru_utime + usage.ru_stime) / wall


def measure(
    wrk: str, label: str, seconds: int, families: tuple[str, ...], sizes: tuple[int, ...]
) -> list[Run]:
    """Deploy every family on a fresh local endpoint and run wrk against each; then stop."""
    import httpx

    from adapters.endpoints.local import LocalTarget
    from adapters.endpoints.local.processes import free_port
    from adapters.store import LocalStore

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-serving-{label}-") as tmp:
        base = Path(tmp)
        lua = base / "post.lua"
        lua.write_text(LUA)
        store = LocalStore(base / "store")
        target = LocalTarget(home=base / "home", store_uri=str(store.root), port=free_port())
        try:
            for family in families:
                version, frame = train_and_publish(store, family, base / family)
                serving = target.deploy(version, lambda _m: None)
                (variant,) = serving.variants.values()
                router_pid = _router_pid(target)
                direct = f"http://127.0.0.1:{variant['port']}/invocations"
                urls = {"direct": direct, "router": serving.address}
                for rows in sizes:
                    body = base / f"{family}-{rows}.json"
                    body.write_bytes(request_body(family, frame, rows))
                    for path, url in urls.items():
                        check = httpx.post(
                            url,
                            content=body.read_bytes(),
                            headers={"content-type": "application/json"},
                            trust_env=False,
                            timeout=30,
                        )
                        if check.status_code != 200 or len(check.json()["predictions"]) != rows:
                            raise RuntimeError(
                                f"{family} {path}: {check.status_code} {check.text[:300]}"
                            )
                        pids = [variant["pid"]] + ([router_pid] if path == "router" else [])
                        warm = {**os.environ, "BENCH_BODY": str(body)}
                        subprocess.run(
                            [wrk, "-t1", "-c16", "-s", str(lua), "-d1s", url],
                            env=warm,
                            capture_output=True,
                            check=True,
                        )
                        cpu_before, start = cpu_seconds(pids), time.monotonic()
                        summary, share = wrk_cpu(wrk, url, body, seconds, lua)
                        server = (cpu_seconds(pids) - cpu_before) / (time.monotonic() - start)
                        rps = summary["requests"] / (summary["duration_us"] / 1e6)
                        errors = sum(
                            summary[k] for k in ("status", "connect", "read", "write", "timeout")
                        )
                        run = Run(
                            family=family,
                            path=path,
                            rows=rows,
                            requests_per_s=round(rps, 1),
                            rows_per_s=round(rps * rows, 1),
                            p50_ms=summary["p50_us"] / 1000,
                            p99_ms=summary["p99_us"] / 1000,
                            errors=errors,
                            wrk_cpu=round(share, 2),
                            server_cpu=round(server, 2),
                            load=round(os.getloadavg()[0], 2),
                            cpu_ms=round(server / rps * 1000, 3) if rps else 0.0,
                        )
                        print(json.dumps({"label": label, **asdict(run)}), flush=True)  # noqa: T201
                        runs.append(run)
        finally:
            target.stop()
    return runs


def metrics_cost(wrk: str, seconds: int, rounds: int, rows: int) -> dict[str, Any]:
    """Throughput and CPU per request with metrics on and off, interleaved in one session.

    Two serving processes of the same limit optimiser run side by side: one as the local
    endpoint runs a variant (metrics on, a multiprocess directory of its own), one with
    ``MLOPS_SERVING_METRICS=false``. wrk drives them in turn (on, off, off, on, ...), so a
    shared machine's load falls on both alike; the ratios compare the sums.
    """
    import httpx

    from adapters.endpoints.local.processes import free_port
    from adapters.store import LocalStore

    totals: dict[str, dict[str, float]] = {
        k: {"requests": 0.0, "seconds": 0.0, "cpu": 0.0} for k in ("on", "off")
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-cost-") as tmp:
        base = Path(tmp)
        lua = base / "post.lua"
        lua.write_text(LUA)
        version, frame = train_and_publish(
            LocalStore(base / "store"), "limit_optimiser", base / "m"
        )
        body = base / "body.json"
        body.write_bytes(request_body("limit_optimiser", frame, rows))
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "PROMETHEUS_"))}
        ports = {}
        try:
            for label, extra in {
                "on": {"PROMETHEUS_MULTIPROC_DIR": str(base / "metrics")},
                "off": {"MLOPS_SERVING_METRICS": "false"},
            }.items():
                ports[label] = free_port()
                env = {
                    **clean,
                    "MLOPS_MODEL_DIR": str(base / "m" / "model"),
                    "MLOPS_MODEL_CONTENTS_SHA256": version.contents_sha256,
                    "MLOPS_MODEL_VERSION": version.version,
                    "MLOPS_SERVING_HOST": "127.0.0.1",
                    "MLOPS_SERVING_PORT": str(ports[label]),
                    "MLOPS_SERVING_LOG_LEVEL": "warning",
                    **extra,
                }
                procs[label] = subprocess.Popen(
                    [sys.executable, "-m", "serving", "serve"], env=env, cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            for label, port in ports.items():
                deadline = time.monotonic() + 180
                while True:
                    try:
                        ping = httpx.get(f"http://127.0.0.1:{port}/ping", trust_env=False)
                        if ping.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline or procs[label].poll() is not None:
                        raise RuntimeError(f"the metrics-{label} server did not start")
                    time.sleep(0.2)
            for port in ports.values():  # warm-up
                wrk_cpu(wrk, f"http://127.0.0.1:{port}/invocations", body, 1, lua)
            for i in range(rounds):
                for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    url = f"http://127.0.0.1:{ports[label]}/invocations"
                    cpu_before, start = cpu_seconds([procs[label].pid]), time.monotonic()
                    summary, _share = wrk_cpu(wrk, url, body, seconds, lua)
                    wall = time.monotonic() - start
                    total = totals[label]
                    total["requests"] += summary["requests"]
                    total["seconds"] += summary["duration_us"] / 1e6
                    total["cpu"] += cpu_seconds([procs[label].pid]) - cpu_before
                    print(json.dumps({"metrics": label, "round": i, **summary, "wall": wall}))  # noqa: T201
            scraped = httpx.get(f"http://127.0.0.1:{ports['on']}/metrics", trust_env=False).text
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=30)
    rps = {k: v["requests"] / v["seconds"] for k, v in totals.items()}
    cpu_us = {k: v["cpu"] / v["requests"] * 1e6 for k, v in totals.items()}
    return {
        "rows": rows,
        "rounds": rounds,
        "seconds": seconds,
        "rps_on": round(rps["on"], 1),
        "rps_off": round(rps["off"], 1),
        "throughput_ratio": round(rps["on"] / rps["off"], 3),
        "cpu_us_on": round(cpu_us["on"], 1),
        "cpu_us_off": round(cpu_us["off"], 1),
        "cpu_ratio": round(cpu_us["on"] / cpu_us["off"], 3),
        "load": round(os.getloadavg()[0], 2),
        "scrape": scraped,
    }


def render_cost(meta: dict[str, str], results: list[dict[str, Any]]) -> str:
    """The metrics-cost section of BENCHMARKS.md."""
    lines = [
        COST_START,
        "## Cost of the Prometheus metrics",
        "",
        f"Measured {meta['date']} on {meta['cpu']} (`make bench-metrics`: "
        "limit optimiser, direct to one serving process, wrk 1 thread 16 connections, "
        "metrics on and off interleaved).",
        "",
        "| rows/request | req/s on | req/s off | throughput on/off | CPU µs/req on | "
        "CPU µs/req off | CPU on/off | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']} | {r['rps_on']} | {r['rps_off']} | {r['throughput_ratio']:.3f} | "
            f"{r['cpu_us_on']} | {r['cpu_us_off']} | {r['cpu_ratio']:.3f} | {r['load']} |"
        )
    lines += [
        "",
        "Recording is once per request (a few counter and histogram updates, one per output "
        "column), so its cost is a fixed few microseconds a request: the ratio is what a "
        "one-row request, the cheapest there is, pays.",
        COST_END,
    ]
    return "\n".join(lines)


def _router_pid(target: Any) -> int:
    from adapters.endpoints.local.processes import read_json

    record = read_json(target.root / "router.json") or {}
    return int(record.get("pid", 0))


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import httptools  # noqa: F401
    import prophet
    import sklearn
    import uvicorn
    import xgboost

    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    try:
        import uvloop

        loop = uvloop.__version__
    except ImportError:
        loop = "absent"
    return {
        **measured_on(),
        "uvicorn": uvicorn.__version__,
        "uvloop": loop,
        "xgboost": xgboost.__version__,
        "scikit-learn": sklearn.__version__,
        "prophet": prophet.__version__,
        "wrk": wrk_version.strip(),
    }


def render(meta: dict[str, str], runs: list[Run], baseline: list[Run], rev: str | None) -> str:
    """The markdown section between the markers."""
    old = {(r.family, r.path, r.rows): r for r in baseline}
    lines = [
        MARK_START,
        "## Serving (`make bench-serving`)",
        "",
        "wrk, 1 thread, 16 keep-alive connections, JSON requests of 1 or 100 records taken from",
        "the generator's data; each family trained with its `configs/models` params and served by",
        "the local endpoint (one serving process per model, 1 uvicorn worker, and the router).",
        "Latencies are wrk's; `wrk CPU` and `server CPU` are shares of one core (the machine has",
        "two, shared by wrk, the servers and anything else running: see the load average).",
        "`CPU ms/request` is the serving process's (and the router's) CPU per request, the figure",
        "least moved by other load: 1000 / it is what one otherwise idle core would sustain.",
        "The serving processes are `python -m serving serve`, the SageMaker container's entry",
        "point, so the container runs this same app.",
        "",
        "Measured " + ", ".join(f"{k} {v}" for k, v in meta.items()) + ".",
        "",
    ]
    head = (
        "| family | path | rows | requests/s | rows/s | p50 ms | p99 ms | errors | wrk CPU "
        "| server CPU | CPU ms/request | load |"
    )
    if old:
        head += f" requests/s at {rev} | ratio | p99 ms at {rev} | CPU ms/request at {rev} |"
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for r in runs:
        cells = [
            r.family,
            r.path,
            str(r.rows),
            f"{r.requests_per_s:,.0f}",
            f"{r.rows_per_s:,.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            str(r.errors),
            f"{r.wrk_cpu:.2f}",
            f"{r.server_cpu:.2f}",
            f"{r.cpu_ms:.2f}",
            f"{r.load:.2f}",
        ]
        if old:
            b = old.get((r.family, r.path, r.rows))
            cells += (
                [
                    f"{b.requests_per_s:,.0f}",
                    f"{r.requests_per_s / b.requests_per_s:.1f}x",
                    f"{b.p99_ms:.0f}",
                    f"{b.cpu_ms:.2f}" if b.cpu_ms else "-",
                ]
                if b
                else ["-", "-", "-", "-"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_section(section: str, start: str = MARK_START, end: str = MARK_END) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (other sections are kept)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if start in text:
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    """Parse the options, run the benchmark (and the baseline), write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6, help="Length of each wrk run.")
    parser.add_argument("--baseline", help="Also measure this git revision, for ratios.")
    parser.add_argument(
        "--baseline-python",
        default=sys.executable,
        help="Interpreter for the baseline (a venv synced from that revision's lock, so that "
        "it runs with its own libraries; default: this one).",
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help="Comma-separated.")
    parser.add_argument("--rows", default="1,100", help="Request sizes, comma-separated.")
    parser.add_argument("--runs-json", help="Write every run here (JSON) instead of BENCHMARKS.md.")
    parser.add_argument("--label", default="current", help=argparse.SUPPRESS)
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="Instead: what a shadow experiment adds to the caller's p50 (limit_optimiser).",
    )
    parser.add_argument(
        "--metrics-cost",
        type=int,
        metavar="ROUNDS",
        help="Only compare metrics on and off (this many interleaved rounds per request size).",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    if args.shadow:
        write_section(
            render_shadow(machine(), measure_shadow(wrk, args.seconds)), SHADOW_START, SHADOW_END
        )
        return 0
    if args.metrics_cost:
        sizes = tuple(int(n) for n in args.rows.split(","))
        results = [metrics_cost(wrk, args.seconds, args.metrics_cost, rows) for rows in sizes]
        write_section(render_cost(machine(), results), COST_START, COST_END)
        return 0
    families = tuple(args.families.split(","))
    sizes = tuple(int(n) for n in args.rows.split(","))
    runs = measure(wrk, args.label, args.seconds, families, sizes)
    if args.runs_json:
        Path(args.runs_json).write_text(json.dumps([asdict(r) for r in runs]))
        return 0
    baseline: list[Run] = []
    if args.baseline:
        baseline = run_baseline(args, wrk)
    write_section(render(machine(), runs, baseline, args.baseline))
    return 0


def run_baseline(args: argparse.Namespace, wrk: str) -> list[Run]:
    """This benchmark, run on ``args.baseline`` checked out in a temporary worktree."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            out = Path(tmp) / "runs.json"
            # The same interpreter and libraries; the other revision's code first on the path
            # (the serving processes get its root as PYTHONPATH from its own settings).
            shutil.copytree(ROOT / "bench", tree / "bench", dirs_exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(tree)}
            subprocess.run(
                [
                    args.baseline_python,
                    str(tree / "bench" / "bench_serving.py"),
                    "--seconds",
                    str(args.seconds),
                    "--families",
                    args.families,
                    "--rows",
                    args.rows,
                    "--label",
                    "baseline",
                    "--runs-json",
                    str(out),
                ],
                check=True,
                env=env,
                cwd=tree,
            )
            return [Run(**r) for r in json.loads(out.read_text())]
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )


# --- a shadow experiment's cost to the caller ----------------------------------------------------

SHADOW_START = "<!-- bench-shadow:start -->"
SHADOW_END = "<!-- bench-shadow:end -->"
SHADOW_SETUPS = ("no experiment", "capture only", "shadow 10 %", "shadow 50 %")
SHADOW_ROUNDS = 5


def measure_shadow(wrk: str, seconds: int) -> dict[str, list[dict[str, float]]]:
    """The router's p50 for one caller with and without a shadow, alternating in one session.

    limit_optimiser v1 serves; v2 runs as the shadow of a started experiment. Between runs only
    the route table changes (no experiment; capture on and no shadow; capture and a shadow
    at 10 % and 50 %), so each setup runs ``SHADOW_ROUNDS`` times, interleaved, against the same
    processes. One connection (``wrk -c1``): the p50 is a request's latency, not a queue's.
    """
    from adapters.endpoints.local import LocalTarget
    from adapters.endpoints.local.processes import free_port
    from adapters.endpoints.local.router_control import extras
    from adapters.store import LocalStore
    from core.endpoint import TrafficPlan

    family = "limit_optimiser"
    results: dict[str, list[dict[str, float]]] = {k: [] for k in SHADOW_SETUPS}
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        base = Path(tmp)
        lua = base / "post.lua"
        lua.write_text(LUA)
        store = LocalStore(base / "store")
        target = LocalTarget(home=base / "home", store_uri=str(store.root), port=free_port())
        try:
            v1, frame = train_and_publish(store, family, base / "v1")
            v2, _ = train_and_publish(store, family, base / "v2")
            target.deploy(v1, lambda _m: None)
            plan = TrafficPlan(family, "shadow", v1, v2, 50.0, "bench-shadow")
            target.start_experiment(plan, lambda _m: None)
            route = target.router.route(family)
            assert route is not None
            full = extras(route)
            routes = {
                "no experiment": {"experiment": None, "shadow": None, "capture": None},
                "capture only": {**full, "shadow": None},
                "shadow 10 %": {**full, "shadow": {**full["shadow"], "percent": 10.0}},
                "shadow 50 %": full,
            }
            body = base / "one.json"
            body.write_bytes(request_body(family, frame, 1))
            url = target.address(family)
            router = [_router_pid(target)]
            for _round in range(SHADOW_ROUNDS):
                for setup in SHADOW_SETUPS:
                    target.router.write(family, route["variants"], routes[setup])
                    wrk_cpu(wrk, url, body, 1, lua, connections=1)  # warm, routes reloaded
                    cpu_before = cpu_seconds(router)
                    summary, _share = wrk_cpu(wrk, url, body, seconds, lua, connections=1)
                    router_cpu = cpu_seconds(router) - cpu_before
                    figures = {
                        # The router's CPU per caller request: the mirror's and capture's work,
                        # less noisy on a loaded machine than a latency.
                        "router_cpu_ms": 1000 * router_cpu / max(summary["requests"], 1),
                        "p50_ms": summary["p50_us"] / 1000,
                        "p99_ms": summary["p99_us"] / 1000,
                        "requests": summary["requests"],
                        "errors": sum(
                            summary[k] for k in ("status", "connect", "read", "write", "timeout")
                        ),
                        "load": os.getloadavg()[0],
                    }
                    print(json.dumps({"setup": setup, **figures}), flush=True)  # noqa: T201
                    results[setup].append(figures)
            target.router.write(family, route["variants"], full)
            target.stop_experiment(family, lambda _m: None)
        finally:
            target.stop()
    return results


def render_shadow(meta: dict[str, str], results: dict[str, list[dict[str, float]]]) -> str:
    """The markdown section of the shadow benchmark."""
    import statistics

    base = statistics.median(r["p50_ms"] for r in results["no experiment"])
    lines = [
        SHADOW_START,
        "## A shadow experiment's cost to the caller (`bench_serving.py --shadow`)",
        "",
        "limit_optimiser, 1-record requests through the router, `wrk -c1` (one caller, so the p50",
        "is a request's latency, not a queue's). v1 answers; v2 is the shadow. The setups",
        f"alternate {SHADOW_ROUNDS} times in one session on the same processes; only the route",
        "table changes. Median of the rounds' p50; the target is ≤ 1 ms added.",
        "",
        f"Measured {meta['date']} on {meta['cpu']}, Python {meta['python']}, uvicorn "
        f"{meta['uvicorn']}, {meta['wrk']}.",
        "",
        "The spread is the lowest and highest p50 of the rounds: an added p50 inside the spread of",
        "the setup without an experiment is noise, not a cost. The router's CPU per request counts",
        "the mirror's and capture's work whatever the load.",
        "",
        "| setup | p50 ms (median of rounds) | spread of rounds | added to p50 | p99 ms "
        "| router CPU ms/request | requests | errors | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setup, runs in results.items():
        p50 = statistics.median(r["p50_ms"] for r in runs)
        lines.append(
            f"| {setup} | {p50:.3f} | {min(r['p50_ms'] for r in runs):.1f} to "
            f"{max(r['p50_ms'] for r in runs):.1f} | {p50 - base:+.3f} ms | "
            f"{statistics.median(r['p99_ms'] for r in runs):.2f} | "
            f"{statistics.median(r['router_cpu_ms'] for r in runs):.3f} | "
            f"{sum(int(r['requests']) for r in runs)} | {sum(int(r['errors']) for r in runs)} | "
            f"{statistics.mean(r['load'] for r in runs):.1f} |"
        )
    lines.append(SHADOW_END)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
