"""One Prophet fit for the forecaster, on cmdstanpy's backend with its data file written by orjson.

:func:`fit_prophet` builds and fits one service's Prophet, warm-started from an earlier fit.

A Prophet fit on eight weeks of hours with Fourier orders of 20 spends about two thirds of its
time writing the data file CmdStan reads: ``Prophet`` turns every array into Python lists and
cmdstanpy's writer (``stanio``) walks them value by value through the ``json`` module. CmdStan
itself, the optimiser, takes a tenth of it. :class:`OrjsonBackend` writes the same numbers
(shortest round-trip repr, like ``json``) straight from the numpy arrays, so the fitted
parameters are identical to stock Prophet's and the fit costs a third
(``tests/unit/test_prophet_fit.py`` holds both to that; ``BENCHMARKS.md`` has the figures).

Prophet has no hook for the writer, and cmdstanpy reads a path as readily as a dict, so
:meth:`OrjsonBackend.fit` repeats ``CmdStanPyBackend.fit`` with a path in place of the dict.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
from prophet.models import CmdStanPyBackend

# The arrays of Prophet's Stan data; the rest are scalars or short lists.
_ARRAYS = ("y", "t", "cap", "t_change", "s_a", "s_m")


def fit_prophet(df: Any, p: Any, holidays: Any = None, seed: int = 0, warm: Any = None) -> Any:
    """One Prophet on ``df`` (``ds``, ``y``), warm-started from ``warm`` when given.

    Args:
        df: one service's hours.
        p: the forecaster's params (Fourier orders, seasonality mode, prior scales).
        holidays: Prophet's holidays frame, or None.
        seed: the optimiser's seed.
        warm: the previous fit of this service, or None.

    The backtest fits each service's Prophet once per fold and once more on the whole window,
    each on a little more data than the last: starting from the previous fit's parameters
    (Prophet's documented warm start) the optimiser has less ground to cover.
    """
    from prophet import Prophet

    model = Prophet(
        growth="linear",
        daily_seasonality=p.daily_order,
        weekly_seasonality=p.weekly_order,
        yearly_seasonality=False,
        seasonality_mode=p.seasonality_mode,
        changepoint_prior_scale=p.changepoint_prior_scale,
        holidays_prior_scale=p.holidays_prior_scale,
        holidays=holidays,
        uncertainty_samples=0,
    )
    model.stan_backend = OrjsonBackend()  # the same fit, its data file written 3x faster
    # The optimiser is LBFGS from Prophet's fixed initial values (or the warm start's);
    # the seed pins the rest.
    if warm is None:
        return model.fit(df, seed=seed)
    init = {name: warm.params[name][0] for name in ("k", "m", "sigma_obs")}
    init |= {name: warm.params[name][0] for name in ("delta", "beta")}
    return model.fit(df, seed=seed, init=init)


class OrjsonBackend(CmdStanPyBackend):
    """``CmdStanPyBackend`` whose ``fit`` writes CmdStan's data file with orjson."""

    def fit(
        self, stan_init: dict[str, Any], stan_data: dict[str, Any], **kwargs: Any
    ) -> OrderedDict[str, np.ndarray]:
        """As ``CmdStanPyBackend.fit`` (same inits, algorithm, iterations and Newton fallback)."""
        if "inits" not in kwargs and "init" in kwargs:
            stan_init = self.sanitize_custom_inits(stan_init, kwargs["init"])
            del kwargs["init"]
        inits = {k: _plain(stan_init[k]) for k in ("k", "m", "delta", "beta", "sigma_obs")}
        fd, path = tempfile.mkstemp(prefix="prophet-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(_stan_data(stan_data), option=orjson.OPT_SERIALIZE_NUMPY))
            args: dict[str, Any] = {
                "data": path,
                "inits": inits,
                "algorithm": "Newton" if stan_data["T"] < 100 else "LBFGS",
                "iter": int(1e4),
            }
            args.update(kwargs)
            try:
                self.stan_fit = self.model.optimize(**args)
            except RuntimeError:
                if not self.newton_fallback or args["algorithm"] == "Newton":
                    raise
                args["algorithm"] = "Newton"
                self.stan_fit = self.model.optimize(**args)
        finally:
            os.unlink(path)
        params = self.stan_to_dict_numpy(
            self.stan_fit.column_names, self.stan_fit.optimized_params_np
        )
        for name in params:
            params[name] = params[name].reshape((1, -1))
        return params


def _stan_data(data: dict[str, Any]) -> dict[str, Any]:
    """What ``CmdStanPyBackend.prepare_data`` gives Stan, with the arrays left as numpy."""
    out = {k: data[k] for k in ("T", "S", "K", "tau", "trend_indicator", "sigmas")}
    out |= {k: np.ascontiguousarray(data[k], dtype=np.float64) for k in _ARRAYS}
    out["X"] = np.ascontiguousarray(data["X"].to_numpy(), dtype=np.float64)
    return out


def _plain(value: Any) -> Any:
    """A numpy init value as ``prepare_data`` passes it on (a list or a Python scalar)."""
    return value.tolist() if isinstance(value, np.ndarray) else value
