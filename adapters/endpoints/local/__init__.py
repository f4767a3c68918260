"""The local endpoint target: the serving app as processes on loopback, behind a router.

The embedded default (no cloud account): what SageMaker does with instances, this does with
processes on one machine, running the same serving app (:mod:`serving.app`)::

    client ──► router 127.0.0.1:8080 ──► variant process (serving app, model v3)  port A
               POST /endpoints/{model}/invocations       variant process (model v4)  port B

Everything lives under ``$MLOPS_HOME/endpoint/``::

    routes.json             model -> variants (name, version, port, weight, pid); the router
                            follows it (see serving.router), so switching is one atomic rename
    router.json, router.log the router's pid and log
    variants/{model}-{version}-{sha8}-{token}/
        model/              the verified, unpacked model.tar.gz (the variant's /opt/ml/model)
        variant.json        what runs there: pid, port, version, hashes
        serve.log           the variant's log
    locks/                  flock files: one deploy per model at a time, one routes writer

A deploy downloads the version from the store and checks every file against the manifest,
unpacks it, starts a variant process (which checks ``contents.json`` again before loading),
waits for its ``/ping``, switches the route, confirms the router serves the new variant, waits
until no request is in flight to the old one, then stops the old process and deletes its
directory. Any failure before the confirmation stops the new process, deletes its directory
and leaves the old route as it was; ``RolloutFailed`` says which step and why. Deploying the
version that already serves (same manifest, processes healthy) does nothing.

Processes start in their own session (``start_new_session``), so they outlive the command that
started them (``mlops retrain``) and a Ctrl-C there. The router starts with the first deploy;
``mlops endpoint stop`` (:meth:`LocalTarget.stop`) ends everything. A process is identified by
its pid and its create time (psutil), so a recycled pid is never signalled.

Modules, one job each:

- :mod:`~adapters.endpoints.local.processes`: start, recognise and stop processes; ports,
  locks, logs, loopback HTTP.
- :mod:`~adapters.endpoints.local.router_control`: ``routes.json`` and the router process
  (start, ping, confirm a generation, drain).
- :mod:`~adapters.endpoints.local.variants`: a variant's directory and process (fetch,
  start, health).
- :mod:`~adapters.endpoints.local.experiment`: A/B and shadow experiments: a challenger
  variant beside the champion on one route, with capture on.
- :mod:`~adapters.endpoints.local.target`: :class:`LocalTarget`, the endpoint-target interface
  composed of the three.
"""

from adapters.endpoints.local.target import LocalTarget

__all__ = ["LocalTarget"]
