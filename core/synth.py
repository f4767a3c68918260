"""Synthetic source data for the three models: plain numpy and pandas, no I/O, no Prefect.

:func:`generate` returns the rows of one source table for a range of days. The data is made so
that the models have something real to learn, and so that drift can be switched on for demos:

* ``client_windows``: one row per client and hour. Normal traffic follows each client's own
  daily cycle (in its local time zone) and weekday/weekend rhythm; about 3 % of windows are
  labelled incidents (bursts, credential stuffing, scraping) of varying intensity. Heavy
  legitimate clients and legitimate batch jobs overlap the weaker incidents, so an unsupervised
  detector finds most incidents but not all.
* ``client_limits``: one row per client and day; ``best_limit`` is a nonlinear function of the
  client's p95/p99 rate, tier, burstiness, error rate and account age, with noise that is wider
  for enterprise clients (their limits are negotiated, not only measured).
* ``service_traffic``: one row per service and hour; level x linear trend x (1 + daily + weekly
  seasonality) x holiday drop (about 40 %) x noise, the form Prophet's multiplicative mode fits.

Determinism: every day is drawn from its own generator seeded by ``(seed, table, day)``, so
generating weeks one at a time gives exactly the rows of generating them at once. Client and
service identities (ids, tiers, base rates) derive from ``seed`` alone and are the same in every
call and every table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

from core.families import limit_optimiser
from core.tables import SCHEMAS, TABLES

TIERS: tuple[str, ...] = limit_optimiser.TIERS
INCIDENTS: tuple[str, ...] = ("none", "burst", "credential_stuffing", "scraping")
SERVICE_NAMES: tuple[str, ...] = (
    "api-gateway", "auth", "search", "payments", "catalog", "orders", "notifications", "media",
)  # fmt: skip

# Traffic trends are measured from this date, so a service's level on a given day does not
# depend on which range was asked for.
_TREND_EPOCH = date(2024, 1, 1)
_HOURS = np.arange(24)


# --- calendar -------------------------------------------------------------------------------


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The ``n``-th ``weekday`` (Monday=0) of a month; ``n=-1`` is the last one."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


@lru_cache(maxsize=64)
def holidays(year: int) -> tuple[date, ...]:
    """US-style public holidays of ``year`` on which API traffic drops.

    New Year's Day, Memorial Day (last Monday of May), Independence Day, Labor Day (first Monday
    of September), Thanksgiving (fourth Thursday of November) and Christmas Day.
    """
    return (
        date(year, 1, 1),
        _nth_weekday(year, 5, 0, -1),
        date(year, 7, 4),
        _nth_weekday(year, 9, 0, 1),
        _nth_weekday(year, 11, 3, 4),
        date(year, 12, 25),
    )


def is_holiday(day: date) -> bool:
    """Whether ``day`` is one of :func:`holidays` of its year."""
    return day in holidays(day.year)


# --- identities (from the seed only) --------------------------------------------------------


def _rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``parts`` (strings hashed stably with crc32)."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF]
    words += [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass(frozen=True)
class Clients:
    """Stable traits of the API's clients (one array element per client)."""

    ids: np.ndarray  # str
    tier: np.ndarray  # index into TIERS
    base_rph: np.ndarray  # mean requests per hour on a weekday
    tz: np.ndarray  # hours east of UTC: the phase of the daily cycle
    amp: np.ndarray  # amplitude of the daily cycle
    weekend: np.ndarray  # weekend (and holiday) traffic factor
    err: np.ndarray  # baseline error rate
    breadth: np.ndarray  # distinct endpoints the client's integration uses
    ip_pool: np.ndarray  # typical number of source IPs
    login_share: np.ndarray  # share of requests that are logins
    fail: np.ndarray  # baseline failed-login rate
    kb_per_req: np.ndarray  # response size
    burstiness: np.ndarray  # peak-second rate over the p99 rate
    created: np.ndarray  # account creation, as a date ordinal
    propensity: np.ndarray  # relative chance of an incident (mean 1)


# Expected value of the raw incident propensity (tier factor x lognormal(0, 0.5)), so that
# the propensity averages 1 over the population whatever its size.
_TIER_SHARE = (0.6, 0.3, 0.1)
_TIER_PROPENSITY = (1.6, 0.8, 0.25)
_MEAN_PROPENSITY = sum(p * f for p, f in zip(_TIER_SHARE, _TIER_PROPENSITY, strict=True)) * float(
    np.exp(0.5**2 / 2)
)


def _client(seed: int, i: int) -> dict[str, float]:
    """Traits of client ``i``, from its own generator: the same whatever the population size."""
    rng = _rng(seed, "client", i)
    tier = int(rng.choice(3, p=_TIER_SHARE))
    return {
        "tier": tier,
        "base_rph": (300.0, 2_500.0, 12_000.0)[tier]
        * np.exp((0.6, 0.6, 0.45)[tier] * rng.normal()),
        "tz": float(rng.choice([-8, -5, -3, 0, 1, 2, 5, 8, 9])),
        "amp": rng.uniform(0.3, 0.75),
        "weekend": rng.uniform(0.7, 1.1) if tier == 0 else rng.uniform(0.35, 0.8),
        "err": rng.beta(2.0, 80.0),
        "breadth": np.round((6.0, 18.0, 50.0)[tier] * rng.lognormal(0.0, 0.4)) + 2,
        "ip_pool": np.round((1.5, 4.0, 15.0)[tier] * rng.lognormal(0.0, 0.5)) + 1,
        "login_share": rng.uniform(0.002, 0.015),
        "fail": rng.beta(2.0, 40.0),
        "kb_per_req": rng.lognormal(np.log(8.0), 0.6),
        "burstiness": 1.05 + rng.lognormal(np.log(0.6), 0.5),
        "created": date(2024, 1, 1).toordinal() - int(rng.integers(30, 2_000)),
        "propensity": _TIER_PROPENSITY[tier] * rng.lognormal(0.0, 0.5) / _MEAN_PROPENSITY,
    }


@lru_cache(maxsize=16)
def clients(seed: int = 42, n_clients: int = 200) -> Clients:
    """The client population for ``seed``: identical in every call and every table.

    Client ``i`` has the same traits in any population of more than ``i`` clients.
    """
    if n_clients < 1:
        raise ValueError("n_clients must be >= 1")
    traits = [_client(seed, i) for i in range(n_clients)]
    arrays = {k: np.array([t[k] for t in traits]) for k in traits[0]}
    arrays["tier"] = arrays["tier"].astype(np.int64)
    arrays["created"] = arrays["created"].astype(np.int64)
    out = Clients(
        ids=np.array([f"client-{i:04d}" for i in range(n_clients)], dtype=object), **arrays
    )
    for value in vars(out).values():
        value.flags.writeable = False
    return out


@dataclass(frozen=True)
class Services:
    """Stable traits of the services behind the API gateway."""

    names: np.ndarray  # str
    level: np.ndarray  # requests per hour at the trend epoch
    growth: np.ndarray  # relative growth per week
    amp: np.ndarray  # amplitude of the daily cycle
    peak: np.ndarray  # UTC hour of the daily peak
    weekend: np.ndarray  # weekend drop, as a share of the level
    noise: np.ndarray  # sd of the hourly log-noise


@lru_cache(maxsize=16)
def services(seed: int = 42, n_services: int = 5) -> Services:
    """The services for ``seed``: identical in every call; service ``i`` in any number of them."""
    if n_services < 1:
        raise ValueError("n_services must be >= 1")
    traits = []
    for i in range(n_services):
        rng = _rng(seed, "service", i)  # service i is the same whatever the number of services
        traits.append(
            {
                "level": rng.lognormal(np.log(30_000.0), 0.7),
                "growth": rng.uniform(0.001, 0.005),
                "amp": rng.uniform(0.3, 0.5),
                "peak": rng.uniform(13.0, 17.0),
                "weekend": rng.uniform(0.12, 0.3),
                "noise": rng.uniform(0.03, 0.06),
            }
        )
    names = [
        SERVICE_NAMES[i] if i < len(SERVICE_NAMES) else f"service-{i:02d}"
        for i in range(n_services)
    ]
    out = Services(
        names=np.array(names, dtype=object),
        **{k: np.array([t[k] for t in traits]) for k in traits[0]},
    )
    for value in vars(out).values():
        value.flags.writeable = False
    return out


# --- per-table generators -------------------------------------------------------------------


def _weekly(day: date, weekend: np.ndarray) -> np.ndarray:
    """Traffic factor of ``day``: ``weekend`` on Saturdays, Sundays and holidays, else 1."""
    if day.weekday() >= 5 or is_holiday(day):
        return weekend
    return np.ones_like(weekend)


def _mix(drift: float) -> np.ndarray:
    """Incident-type probabilities (burst, stuffing, scraping); drift favours the latter two."""
    mix = np.array([0.5 - 0.25 * min(drift, 1.5), 0.3 + 0.1 * drift, 0.2 + 0.15 * drift])
    mix = np.clip(mix, 0.05, None)
    return mix / mix.sum()


# Incidents per client and day, before propensity and drift: gives about 3 % abusive windows.
_INCIDENT_RATE = 0.20
_DURATION = {1: (1, 4), 2: (2, 7), 3: (3, 11)}  # hours, [low, high)


def _client_windows_day(
    c: Clients, day: date, rng: np.random.Generator, drift: float
) -> dict[str, np.ndarray]:
    n = len(c.ids)
    local = (_HOURS[None, :] + c.tz[:, None]) % 24
    cycle = 0.75 * np.cos(2 * np.pi * (local - 14) / 24) + 0.25 * np.cos(
        4 * np.pi * (local - 11) / 24
    )
    shape = 1.0 + c.amp[:, None] * cycle
    day_factor = rng.lognormal(0.0, 0.15, n) * _weekly(day, c.weekend)
    lam = c.base_rph[:, None] * shape * day_factor[:, None] * (1.0 + 0.6 * drift)
    lam = lam * rng.lognormal(0.0, 0.25, (n, 24))

    # Legitimate batch jobs: a few hours of several times the usual traffic, labelled normal.
    batch = rng.random(n) < 0.06
    b_start = rng.integers(0, 24, n)
    b_len = rng.integers(1, 4, n)
    in_batch = batch[:, None] & (b_start[:, None] <= _HOURS) & ((b_start + b_len)[:, None] > _HOURS)
    lam = np.where(in_batch, lam * rng.uniform(2.0, 6.0, n)[:, None], lam)

    # Incidents: a Poisson number per client, each a run of hours of one type and intensity.
    rate = _INCIDENT_RATE * c.propensity * (1.0 + drift)
    per_client = rng.poisson(rate)
    owner = np.repeat(np.arange(n), per_client)
    m = owner.size
    kind_of = 1 + rng.choice(3, size=m, p=_mix(drift))
    low = np.array([0, *(_DURATION[k][0] for k in (1, 2, 3))])[kind_of]
    high = np.array([0, *(_DURATION[k][1] for k in (1, 2, 3))])[kind_of]
    start = rng.integers(0, 24, m)
    length = rng.integers(low, high) if m else np.zeros(0, dtype=int)
    # Intensity in (0.2, 1]: most incidents are blatant, a tail of weak ones hides among
    # normal traffic.
    strength = 0.2 + 0.8 * rng.random(m) ** 0.75
    covers = (start[:, None] <= _HOURS) & ((start + length)[:, None] > _HOURS)
    inc, hrs = np.nonzero(covers)
    kind = np.zeros((n, 24), dtype=np.int64)
    s = np.zeros((n, 24))
    kind[owner[inc], hrs] = kind_of[inc]
    s[owner[inc], hrs] = strength[inc]
    burst, stuffing, scraping = (kind == 1), (kind == 2), (kind == 3)

    # Incident-specific draws happen for every window (fixed stream layout), used where needed.
    u = rng.random((6, n, 24))
    lam = np.where(burst, lam * np.exp(s * np.log(8.0 + 32.0 * u[0])), lam)
    lam = np.where(scraping, lam * (1.0 + s * (1.0 + 4.0 * u[0])), lam)
    normal_requests = rng.poisson(lam)

    breadth = c.breadth[:, None]
    paths = rng.poisson(breadth * (1.0 - np.exp(-normal_requests / (breadth * 3.0))))
    paths = np.minimum(paths, normal_requests)
    ips = np.where(
        normal_requests > 0,
        1 + rng.poisson((c.ip_pool[:, None] - 1) * (1.0 - np.exp(-normal_requests / 300.0))),
        0,
    )
    # Logins open sessions that then make many calls: they grow far slower than traffic.
    logins = rng.poisson(c.login_share[:, None] * 300.0 * np.log1p(normal_requests / 300.0))
    p_err = np.clip(c.err[:, None] + 0.02 * drift, 0.0, 0.95)
    p_err = np.where(burst, np.clip(p_err + s * (0.05 + 0.3 * u[1]), 0.0, 0.95), p_err)
    errors = rng.binomial(normal_requests, p_err)
    p_fail = np.broadcast_to(c.fail[:, None], (n, 24))
    kb = (
        normal_requests
        * c.kb_per_req[:, None]
        * (1.0 + 0.4 * drift)
        * rng.lognormal(0, 0.15, (n, 24))
    )

    # Credential stuffing: many logins, mostly failing, from many IPs.
    attempts = np.where(
        stuffing, rng.poisson(np.exp(np.log(20.0) + s * np.log(10.0 + 140.0 * u[2]))), 0
    )
    p_fail = np.where(stuffing, np.clip(p_fail + s * (0.4 + 0.45 * u[3]), 0.0, 0.98), p_fail)
    ips = ips + np.where(stuffing, rng.poisson(s * (10.0 + 190.0 * u[4])), 0)
    # Scraping: a sweep over many paths, large responses, a few extra IPs.
    paths = paths + np.where(scraping, rng.poisson(s * (80.0 + 1_400.0 * u[2])), 0)
    kb = np.where(scraping, kb * (1.0 + s * (1.0 + 3.0 * u[3])), kb)
    ips = ips + np.where(scraping, rng.poisson(s * (2.0 + 28.0 * u[4])), 0)

    logins = logins + attempts
    failed = rng.binomial(logins, p_fail)
    requests = normal_requests + attempts
    errors = errors + np.where(stuffing, failed, 0)
    kb = kb + attempts * 0.8
    jitter = rng.lognormal(0.0, 0.1, (n, 24))
    # Bursts compress the traffic into minutes; scrapers pace themselves evenly.
    jitter = np.where(burst, jitter * np.exp(-s * (0.5 + u[5])), jitter)
    jitter = np.where(scraping, 1.0, jitter)
    interarrival = np.where(
        requests > 0, 3_600_000.0 / np.maximum(requests, 1) * jitter, 3_600_000.0
    )

    return {
        "client": np.broadcast_to(np.arange(n)[:, None], (n, 24)),
        "hour": np.broadcast_to(_HOURS[None, :], (n, 24)),
        "requests": requests,
        "error_rate": errors / np.maximum(requests, 1),
        "unique_paths": paths,
        "unique_ips": ips,
        "login_attempts": logins,
        "failed_login_rate": failed / np.maximum(logins, 1),
        "kb_out": np.round(kb, 3),
        "mean_interarrival_ms": np.round(interarrival, 3),
        "kind": kind,
    }


_WINDOW_FEATURES = (
    "requests", "error_rate", "unique_paths", "unique_ips", "login_attempts",
    "failed_login_rate", "kb_out", "mean_interarrival_ms",
)  # fmt: skip


def _client_windows(
    start: date, days: int, seed: int, n_clients: int, drift: float
) -> pd.DataFrame:
    c = clients(seed, n_clients)
    parts = []
    for d in range(days):
        day = start + timedelta(days=d)
        arrays = _client_windows_day(c, day, _rng(seed, "client_windows", day.toordinal()), drift)
        # Rows in time order (hour, then client), as an hourly aggregation job would write them.
        parts.append({k: np.asarray(v).T.ravel() for k, v in arrays.items()} | {"day": d})
    client = np.concatenate([p["client"] for p in parts])
    hours = np.concatenate([p["hour"] + 24 * p["day"] for p in parts])
    times = np.datetime64(start, "h") + hours.astype("timedelta64[h]")
    kind = np.concatenate([p["kind"] for p in parts])
    frame = {
        "client_id": c.ids[client],
        "window_start": times.astype("datetime64[ns]"),
        **{col: np.concatenate([p[col] for p in parts]) for col in _WINDOW_FEATURES},
        "is_abuse": (kind > 0).astype(np.int64),
        "incident_type": np.array(INCIDENTS, dtype=object)[kind],
    }
    return _typed(pd.DataFrame(frame), "client_windows")


_HEADROOM = np.array([1.2, 1.5, 2.0])  # limit over the client's peak rate, by tier
_FLOOR = np.array([0.2, 1.0, 5.0])  # smallest limit a tier gets, rps
_LIMIT_NOISE = np.array([0.07, 0.08, 0.2])  # enterprise limits are negotiated, so noisier


def _client_limits(start: date, days: int, seed: int, n_clients: int, drift: float) -> pd.DataFrame:
    c = clients(seed, n_clients)
    n = len(c.ids)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in SCHEMAS["client_limits"]}
    for d in range(days):
        day = start + timedelta(days=d)
        rng = _rng(seed, "client_limits", day.toordinal())
        scale = rng.lognormal(0.0, 0.15, n) * _weekly(day, c.weekend) * (1.0 + 0.6 * drift)
        avg = c.base_rph * scale / 3600.0
        p95 = avg * (1.0 + 0.9 * c.amp) * rng.lognormal(0.0, 0.07, n)
        burst_ratio = c.burstiness * (1.0 + 0.3 * drift) * rng.lognormal(0.0, 0.1, n)
        p99 = p95 * (1.0 + 0.35 * (burst_ratio - 1.0)) * rng.lognormal(0.0, 0.06, n)
        mean_err = np.clip(c.err + 0.02 * drift, 1e-3, 0.9)
        error_rate = rng.beta(300.0 * mean_err, 300.0 * (1.0 - mean_err))
        age = np.maximum(day.toordinal() - c.created, 0)
        endpoints = np.maximum(rng.poisson(c.breadth * 0.7), 1)
        # The limit that served the client well: headroom over its peak, more for bursty
        # clients, less for error-prone ones, a little more for long-standing accounts, and
        # never below the tier's floor.
        need = (0.7 * p99 + 0.3 * p95) * _HEADROOM[c.tier] * (1.0 + 0.4 * np.log(burst_ratio))
        need = need * np.exp(-2.5 * error_rate) * (1.0 + 0.15 * np.minimum(age / 730.0, 1.0))
        best = np.sqrt(need**2 + _FLOOR[c.tier] ** 2) * rng.lognormal(0.0, _LIMIT_NOISE[c.tier])
        values = {
            "client_id": c.ids,
            "day": np.full(n, np.datetime64(day, "ns")),
            "tier": np.array(TIERS, dtype=object)[c.tier],
            "avg_rps": np.round(avg, 4),
            "p95_rps": np.round(p95, 4),
            "p99_rps": np.round(p99, 4),
            "burst_ratio": np.round(burst_ratio, 4),
            "error_rate": np.round(error_rate, 5),
            "account_age_days": age.astype(np.int64),
            "endpoints_used": endpoints.astype(np.int64),
            "best_limit": np.round(best, 3),
        }
        for k, v in values.items():
            cols[k].append(v)
    return _typed(pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()}), "client_limits")


def _weekend_weight(day: date) -> np.ndarray:
    """Per hour of ``day``, how much of the weekend drop applies (0 on weekdays, 1 at weekends).

    Users sit in many time zones, so traffic eases into the weekend over a few hours around
    midnight UTC instead of stepping down at once.
    """
    hour_of_week = day.weekday() * 24 + _HOURS + 0.5

    def ramp(h: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-h / 2.0))

    def inside(h: np.ndarray) -> np.ndarray:
        return ramp(h - 120.0) - ramp(h - 168.0)  # Saturday 00:00 to Monday 00:00

    return inside(hour_of_week) + inside(hour_of_week + 168.0)  # the week before, wrapped


def _service_traffic(
    start: date, days: int, seed: int, n_services: int, drift: float
) -> pd.DataFrame:
    s = services(seed, n_services)
    n = len(s.names)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in SCHEMAS["service_traffic"]}
    for d in range(days):
        day = start + timedelta(days=d)
        rng = _rng(seed, "service_traffic", day.toordinal())
        weeks = (day - _TREND_EPOCH).days / 7.0 + _HOURS / 168.0  # (24,)
        trend = s.level[:, None] * (1.0 + s.growth[:, None] * weeks[None, :])
        phase = (_HOURS[None, :] - s.peak[:, None]) / 24.0
        daily = s.amp[:, None] * (
            0.8 * np.cos(2 * np.pi * phase) + 0.2 * np.cos(4 * np.pi * (phase + 0.125))
        )
        weekly = -s.weekend[:, None] * _weekend_weight(day)[None, :]
        holiday = is_holiday(day)
        mean = trend * (1.0 + daily + weekly) * (0.6 if holiday else 1.0) * (1.0 + 0.5 * drift)
        mean = mean * np.exp(rng.normal(0.0, 1.0, (n, 24)) * s.noise[:, None])
        requests = rng.poisson(mean)
        # Time order: hour, then service.
        cols["service"].append(np.tile(s.names, 24))
        cols["ts"].append(np.repeat(np.datetime64(day, "h") + _HOURS.astype("timedelta64[h]"), n))
        cols["requests"].append(requests.T.ravel().astype(np.int64))
        cols["is_holiday"].append(np.full(24 * n, int(holiday), dtype=np.int64))
    frame = {k: np.concatenate(v) for k, v in cols.items()}
    frame["ts"] = frame["ts"].astype("datetime64[ns]")
    return _typed(pd.DataFrame(frame), "service_traffic")


_DTYPES = {"int64": "int64", "float64": "float64", "string": "str", "timestamp": "datetime64[ns]"}


def _typed(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    schema = SCHEMAS[table]
    return frame[list(schema)].astype({k: _DTYPES[v] for k, v in schema.items()})


def _empty(table: str) -> pd.DataFrame:
    return _typed(pd.DataFrame({k: pd.Series([], dtype=object) for k in SCHEMAS[table]}), table)


def generate(
    table: str,
    start: datetime,
    days: int,
    *,
    n_clients: int = 200,
    n_services: int = 5,
    seed: int = 42,
    drift: float = 0.0,
) -> pd.DataFrame:
    """Rows of ``table`` for ``days`` days from ``start``.

    Args:
        table: one of :data:`TABLES`.
        start: first day (naive UTC; the time of day is ignored, days start at midnight).
        days: number of days (0 gives an empty frame with the right columns).
        n_clients: clients in ``client_windows`` and ``client_limits``.
        n_services: services in ``service_traffic``.
        seed: fixes identities and every draw; the same arguments give the same rows.
        drift: 0 is the baseline; larger values raise traffic and error rates, shift the
            incident mix towards credential stuffing and scraping, and raise service levels.

    Returns:
        The table's columns (:data:`SCHEMAS`, no ``id``) in order, with dtypes ``int64``,
        ``float64``, ``str`` and ``datetime64[ns]``, rows in event-time order.

    Raises:
        ValueError: an unknown table, or a negative ``days`` or ``drift``.
    """
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; known: {list(TABLES)}")
    if days < 0:
        raise ValueError("days must be >= 0")
    if drift < 0:
        raise ValueError("drift must be >= 0")
    first = start.date() if isinstance(start, datetime) else start
    if days == 0:
        return _empty(table)
    if table == "client_windows":
        return _client_windows(first, days, seed, n_clients, drift)
    if table == "client_limits":
        return _client_limits(first, days, seed, n_clients, drift)
    return _service_traffic(first, days, seed, n_services, drift)
