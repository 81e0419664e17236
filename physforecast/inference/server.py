"""The HTTP forecast server behind ``physforecast serve`` (FastAPI + uvicorn).

Endpoints:

- ``POST /forecast``: a dataset in the body, netCDF (``Content-Type:
  application/x-netcdf``) or JSON (``application/json``, see
  :mod:`physforecast.inference.codec`); the forecast comes back in the format the
  ``Accept`` header asks for (the request's own by default). Query parameters: ``steps``
  (lead times; more than the model's ``out_steps`` rolls out) and ``init`` (repeatable:
  time indices or labels of the last input frame). The dataset is checked by
  :func:`physforecast.rollout` itself (variables, grid, history length, parameters) and
  by :func:`~physforecast.inference.codec.check_missing`; a request it refuses gets a 4xx
  with a ``detail`` message: 400 an unreadable body, 415 an unknown media type, 422 a
  dataset the model cannot forecast from, 503 a full queue (with ``Retry-After``).
- ``GET /health``: the model and what it expects.
- ``GET /metrics``: request counts, latency percentiles, batch sizes, ``n_active``, queue.

Concurrent requests are micro-batched (:class:`~physforecast.inference.batching.MicroBatcher`):
each request runs :func:`physforecast.rollout` on a :class:`physforecast.Forecaster`
whose model calls go through the shared batcher. At most ``queue`` requests are admitted
at once; the next gets 503 at once instead of waiting without bound. With students and a
latency budget, a :class:`~physforecast.inference.policy.LoadAdaptivePolicy` picks the
number of students of every call from the backlog. On shutdown (Ctrl-C, SIGTERM) the
server stops accepting connections, finishes the requests in flight, then stops the
batcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

try:
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, Response
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the forecast server needs FastAPI and uvicorn: pip install 'physforecast[serve]'"
    ) from err

import torch

import physforecast as pf

from .batching import BatchedModel, MicroBatcher, QueueFullError, RunFn
from .codec import (
    JSON_TYPE,
    NETCDF_TYPES,
    RequestError,
    check_missing,
    dataset_from_json,
    dataset_from_netcdf,
    dataset_to_json,
    dataset_to_netcdf,
)
from .policy import CostModel, LoadAdaptivePolicy, calibrate
from .stats import ServeStats

__all__ = [
    "ServeConfig",
    "ForecastService",
    "model_runner",
    "create_app",
    "serve",
    "BackgroundServer",
]

NETCDF_TYPE = NETCDF_TYPES[0]


@dataclass
class ServeConfig:
    """How the server batches, queues and picks students.

    Attributes
    ----------
    max_batch : int
        Most windows per model call.
    max_wait_ms : float
        How long a request may wait for others to share its model call.
    queue : int
        Most requests admitted at once (waiting or running); more get 503.
    latency_budget_ms : float, optional
        With students: the load-adaptive policy keeps the expected wait of the last queued
        window under this by dropping the last-added students. ``None``: fixed ``n_active``.
    n_active : int, optional
        Students per call without a policy (``None``: all).
    min_active : int
        The policy never runs fewer students than this (an accuracy floor).
    cost : CostModel, optional
        The policy's cost model; measured at startup (:func:`~physforecast.inference.policy.calibrate`)
        when omitted.
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    queue: int = 64
    latency_budget_ms: float | None = None
    n_active: int | None = None
    min_active: int = 1
    cost: CostModel | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue < 1:
            raise ValueError(
                f"max_batch and queue must be >= 1; got {self.max_batch}, {self.queue}"
            )
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {self.max_wait_ms}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be > 0; got {self.latency_budget_ms}")


def model_runner(model: torch.nn.Module) -> RunFn:
    """``run(x, cond, n_active)`` for a model: on its device, ``n_active`` passed to students.

    Inputs and the fp32 output live on the CPU; a teacher ignores ``n_active``.
    """
    students = getattr(model, "n_students", None) is not None
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    def run(x: torch.Tensor, cond: torch.Tensor | None, n_active: int | None) -> torch.Tensor:
        x = x.to(device)
        cond = cond.to(device) if cond is not None else None
        y = model(x, cond, n_active=n_active) if students else model(x, cond)
        return y.float().cpu()

    return run


def _init_values(init: list[str] | None) -> list[int | str] | None:
    if not init:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in init]


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


class ForecastService:
    """The server's state and request handling, apart from HTTP.

    Parameters
    ----------
    forecaster : Forecaster
        What to serve (:func:`physforecast.load`: the students of a students run).
    config : ServeConfig, optional
        Batching, queue and policy settings.
    """

    def __init__(self, forecaster: pf.Forecaster, config: ServeConfig | None = None) -> None:
        self.forecaster = forecaster.eval()
        self.config = config or ServeConfig()
        self.stats = ServeStats()
        model = forecaster.model
        self.n_students: int | None = getattr(model, "n_students", None)
        if self.config.n_active is not None and self.n_students is None:
            raise ValueError("n_active applies to students; this model is a teacher")
        for name in ("n_active", "min_active"):
            value = getattr(self.config, name)
            if self.n_students and value is not None and not 1 <= value <= self.n_students:
                raise ValueError(f"{name} must be in 1..{self.n_students}, got {value}")
        self.run = model_runner(model)
        self.policy: LoadAdaptivePolicy | None = None
        self.batcher = MicroBatcher(
            self.run,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            capacity=self.config.queue,
            n_active=self.config.n_active if self.config.n_active is not None else self.n_students,
            stats=self.stats,
            demand=lambda: self.in_flight,  # requests admitted, some still being decoded
        )
        self.batched = pf.Forecaster(
            BatchedModel(self.batcher, model),
            forecaster.normalizer,
            in_steps=forecaster.in_steps,
            out_steps=forecaster.out_steps,
            config=forecaster.config,
            grid=forecaster.grid,
            run_dir=forecaster.run_dir,
        )
        self._lock = threading.Lock()
        self.in_flight = 0
        self.pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------
    def _make_policy(self) -> LoadAdaptivePolicy | None:
        budget = self.config.latency_budget_ms
        if budget is None or not self.n_students:
            return None
        cost = self.config.cost
        if cost is None:
            if self.forecaster.grid is None:
                raise ValueError("calibrating the policy needs the forecaster's grid; pass cost=")
            fc = self.forecaster
            channels = int(getattr(fc.model, "in_channels", len(fc.variables)))
            x = torch.zeros(1, fc.in_steps, channels, *fc.grid.values())
            cond = torch.zeros(1, fc.cond_dim) if fc.cond_dim else None
            cost = calibrate(
                self.run, x, cond, n_students=self.n_students, max_batch=self.config.max_batch
            )
        return LoadAdaptivePolicy(
            self.n_students, budget, self.config.max_batch, cost, self.config.min_active
        )

    def start(self) -> None:
        """Calibrate the policy (if any), start the batcher and the request threads."""
        self.policy = self._make_policy()
        self.batcher.policy = self.policy
        self.batcher.start()
        self.pool = ThreadPoolExecutor(
            max_workers=self.config.queue, thread_name_prefix="physforecast-request"
        )

    def close(self) -> None:
        """Finish what is queued and stop."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.batcher.close()

    def admit(self) -> bool:
        """Count a request in if there is room in the queue."""
        with self._lock:
            if self.in_flight >= self.config.queue:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        """Count a finished request out."""
        with self._lock:
            self.in_flight -= 1

    # -- requests -------------------------------------------------------------------
    def forecast(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None = None,
        *,
        steps: int | None = None,
        init: list[int | str] | None = None,
    ) -> tuple[bytes, str]:
        """Forecast from a request body; returns the response body and its media type.

        Raises
        ------
        RequestError
            With the HTTP status to answer.
        """
        media = _media(content_type)
        if media == JSON_TYPE:
            ds = dataset_from_json(body)
        elif media in NETCDF_TYPES:
            ds = dataset_from_netcdf(body)
        else:
            raise RequestError(
                f"unsupported Content-Type {content_type!r}; send {NETCDF_TYPE} (netCDF bytes) "
                f"or {JSON_TYPE}",
                415,
            )
        fc = self.batched
        try:
            check_missing(ds, fc.variables, fc.params if fc.cond_dim else ())
            if steps is None:
                out = pf.predict(fc, ds, init=init, batch_size=self.config.max_batch)
            else:
                out = pf.rollout(fc, ds, steps, init=init, batch_size=self.config.max_batch)
        except QueueFullError as err:
            raise RequestError(str(err), 503) from err
        except KeyError as err:
            raise RequestError(str(err.args[0] if err.args else err), 422) from err
        except (ValueError, TypeError) as err:
            raise RequestError(str(err), 422) from err
        wanted = _media(accept)
        if wanted in ("", "*/*"):
            wanted = media
        if wanted == JSON_TYPE:
            return json.dumps(dataset_to_json(out)).encode(), JSON_TYPE
        if wanted in NETCDF_TYPES:
            return dataset_to_netcdf(out), NETCDF_TYPE
        raise RequestError(f"cannot answer in {accept!r}; accept {NETCDF_TYPE} or {JSON_TYPE}", 406)

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` reports."""
        fc = self.forecaster
        return {
            "status": "ok",
            "model": "students" if self.n_students else "teacher",
            "run_dir": fc.run_dir,
            "variables": fc.variables,
            "params": fc.params if fc.cond_dim else [],
            "in_steps": fc.in_steps,
            "out_steps": fc.out_steps,
            "grid": fc.grid,
            "n_students": self.n_students,
        }

    def metrics(self) -> dict[str, Any]:
        """What ``GET /metrics`` reports."""
        policy = self.policy
        return self.stats.snapshot(
            queue={
                "in_flight": self.in_flight,
                "capacity": self.config.queue,
                "waiting_windows": self.batcher.pending_rows,
                "max_batch": self.config.max_batch,
                "max_wait_ms": self.config.max_wait_ms,
            },
            n_active={
                "n_students": self.n_students,
                "fixed": self.config.n_active,
                "policy": None
                if policy is None
                else {
                    "latency_budget_ms": policy.latency_budget_ms,
                    "min_active": policy.min_active,
                    "cost_ms": {
                        "fixed": policy.cost.fixed_ms,
                        "per_window": policy.cost.row_ms,
                        "per_student_window": policy.cost.student_ms,
                    },
                },
            },
        )


def create_app(forecaster: pf.Forecaster, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``forecaster``.

    The batcher starts with the application's lifespan and stops after the last request
    in flight has been answered.
    """
    service = ForecastService(forecaster, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="physforecast",
        summary="Forecasts of physical fields from their recent past",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.post("/forecast")
    async def forecast(
        request: Request,
        steps: Annotated[
            int | None, Query(description="lead times (default: the model's out_steps)")
        ] = None,
        init: Annotated[
            list[str] | None, Query(description="last input frame(s): indices or times")
        ] = None,
    ) -> Response:
        t0 = time.perf_counter()
        if not service.admit():
            service.stats.record_request(503, time.perf_counter() - t0)
            return JSONResponse(
                {
                    "detail": f"the server is busy: {service.config.queue} requests are in flight; retry shortly"
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        status = 500
        try:
            body = await request.body()
            loop = asyncio.get_running_loop()
            content, media = await loop.run_in_executor(
                service.pool,
                lambda: service.forecast(
                    body,
                    request.headers.get("content-type"),
                    request.headers.get("accept"),
                    steps=steps,
                    init=_init_values(init),
                ),
            )
            status = 200
            return Response(content, media_type=media)
        except RequestError as err:
            status = err.status
            headers = {"Retry-After": "1"} if status == 503 else None
            return JSONResponse({"detail": str(err)}, status_code=status, headers=headers)
        finally:
            service.release()
            service.stats.record_request(status, time.perf_counter() - t0)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return service.metrics()

    return app


def serve(
    run_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    device: str = "cpu",
    log_level: str = "info",
    shutdown_timeout_s: float = 30.0,
) -> None:
    """Serve the forecaster of ``run_dir`` until interrupted (blocking).

    The run's model is served as :func:`physforecast.load` gives it (the students of a
    students run). On Ctrl-C or SIGTERM the requests in flight are finished (up to ``shutdown_timeout_s``).
    """
    import physforecast as pf

    app = create_app(pf.load(run_dir, device=device), config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=shutdown_timeout_s,
    )


class BackgroundServer:
    """Run an application with uvicorn in a background thread (tests, benchmarks).

    Parameters
    ----------
    app : FastAPI
        From :func:`create_app`.
    host : str
        Interface to listen on.
    port : int
        0 picks a free port (the socket is bound before the server starts, so no race).
    startup_timeout_s : float
        How long :meth:`start` waits for the server to accept connections.

    Examples
    --------
    >>> with BackgroundServer(create_app(forecaster)) as server:    # doctest: +SKIP
    ...     httpx.get(server.url + "/health").json()
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = int(port)
        self.log_level = log_level
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Bind, start serving and wait until connections are accepted."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level=self.log_level,
            lifespan="on",
            timeout_graceful_shutdown=self.shutdown_timeout_s,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="physforecast-server",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped during startup; see its log")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the server to shut down (requests in flight finish) and wait for it."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout if timeout is not None else self.shutdown_timeout_s + 10)
        alive = self._thread.is_alive()
        self._server, self._thread = None, None
        if alive:
            raise TimeoutError("the server did not shut down in time")

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
