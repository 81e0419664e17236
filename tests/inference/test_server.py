"""The forecast server for real: uvicorn on 127.0.0.1 (a free port), started and stopped by
each test with bounded time, and driven over HTTP with httpx."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import xarray as xr

import physforecast as pf

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from physforecast.inference.codec import dataset_from_json, dataset_to_json  # noqa: E402
from physforecast.inference.policy import CostModel  # noqa: E402
from physforecast.inference.runs import load_students  # noqa: E402
from physforecast.inference.server import BackgroundServer, ServeConfig, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(180)
NETCDF = "application/x-netcdf"


@contextmanager
def running(forecaster, **config):
    with BackgroundServer(create_app(forecaster, ServeConfig(**config))) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield server, client


def post(client, ds: xr.Dataset, fmt: str = "netcdf", **params) -> httpx.Response:
    if fmt == "json":
        return client.post("/forecast", json=dataset_to_json(ds), params=params)
    return client.post(
        "/forecast", content=bytes(ds.to_netcdf()), headers={"content-type": NETCDF}, params=params
    )


def send(client, body: bytes) -> httpx.Response:
    return client.post("/forecast", content=body, headers={"content-type": NETCDF})


def decode(response: httpx.Response) -> xr.Dataset:
    if response.headers["content-type"].startswith("application/json"):
        return dataset_from_json(response.content)
    return xr.open_dataset(response.content).load()


def concurrently(fn, n: int) -> list:
    """Run ``fn(i)`` in ``n`` threads released together; return the results in order.

    (The netCDF library is not thread-safe: bodies are encoded before, and decoded after.)"""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def work(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.fixture(scope="module")
def students(students_run):
    return load_students(students_run)


@pytest.fixture(scope="module")
def teacher(tiny_run):
    return pf.load(tiny_run)


@pytest.fixture(scope="module")
def students_server(students):
    with running(students, max_wait_ms=2.0) as pair:
        yield pair


# ------------------------------------------------------------------ forecasts


@pytest.mark.parametrize("fmt", ["netcdf", "json"])
def test_forecast_over_http_equals_the_forecaster(students_server, students, tiny_ds, fmt):
    _, client = students_server
    response = post(client, tiny_ds, fmt)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        NETCDF if fmt == "netcdf" else "application/json"
    )
    got = decode(response)
    want = pf.predict(students, tiny_ds)
    assert got["vorticity"].dims == want["vorticity"].dims
    np.testing.assert_allclose(got["vorticity"].values, want["vorticity"].values, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["init_index"].values, want["init_index"].values)
    np.testing.assert_allclose(got["lead_time"].values, want["lead_time"].values)


def test_rollout_and_init_over_http(students_server, students, tiny_ds):
    _, client = students_server
    response = post(client, tiny_ds, "json", steps=5, init=[4, 7])
    assert response.status_code == 200, response.text
    got = decode(response)
    want = pf.rollout(students, tiny_ds, 5, init=[4, 7])
    np.testing.assert_allclose(got["vorticity"].values, want["vorticity"].values, rtol=0, atol=1e-6)
    assert got.sizes["lead_time"] == 5 and sorted(set(got["init_index"].values)) == [4, 7]


def test_the_answer_format_follows_accept(students_server, tiny_ds):
    _, client = students_server
    response = client.post(
        "/forecast",
        content=bytes(tiny_ds.to_netcdf()),
        headers={"content-type": NETCDF, "accept": "application/json"},
    )
    assert response.status_code == 200
    assert "vorticity" in response.json()["data_vars"]


def test_a_teacher_run_is_served_too(teacher, tiny_ds):
    with running(teacher) as (_, client):
        health = client.get("/health").json()
        assert health["model"] == "teacher" and health["n_students"] is None
        got = decode(post(client, tiny_ds))
        metrics = client.get("/metrics").json()
    want = pf.predict(teacher, tiny_ds)
    np.testing.assert_allclose(got["vorticity"].values, want["vorticity"].values, rtol=0, atol=1e-6)
    assert metrics["n_active"]["last"] is None and metrics["batches"]["rows"] == 6


def test_health_and_metrics_report_the_model_and_the_traffic(students_server, tiny_ds):
    _, client = students_server
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "students",
        "run_dir": health["run_dir"],
        "variables": ["vorticity"],
        "params": [],
        "in_steps": 2,
        "out_steps": 2,
        "grid": {"y": 32, "x": 32},
        "n_students": 3,
    }
    before = client.get("/metrics").json()
    assert post(client, tiny_ds).status_code == 200
    assert post(client, tiny_ds.rename(vorticity="w")).status_code == 422
    after = client.get("/metrics").json()
    assert after["requests"]["total"] == before["requests"]["total"] + 2
    assert (
        after["requests"]["by_status"]["422"] == before["requests"]["by_status"].get("422", 0) + 1
    )
    assert after["latency_ms"]["count"] == before["latency_ms"]["count"] + 1
    assert after["latency_ms"]["p50"] <= after["latency_ms"]["p99"] <= after["latency_ms"]["max"]
    assert after["batches"]["rows"] == before["batches"]["rows"] + 6
    assert after["n_active"]["last"] == 3 and after["queue"]["capacity"] == 64


# ------------------------------------------------------------------ bad requests


def _gap(ds):
    bad = ds.copy(deep=True)
    bad["vorticity"][0, 5, 3, 4] = np.nan
    return bad


def _infinite(ds):
    bad = ds.copy(deep=True)
    bad["vorticity"][1, 2, 0, 0] = np.inf
    return bad


BAD = [
    ("wrong variable", lambda ds: post_ds(ds.rename(vorticity="w")), 422, "lacks variable"),
    ("wrong grid", lambda ds: post_ds(ds.isel(x=slice(0, 16))), 422, "different grid"),
    ("short history", lambda ds: post_ds(ds.isel(time=slice(0, 1))), 422, "too short a history"),
    ("init too early", lambda ds: post_ds(ds, init=[0]), 422, "too short a history"),
    ("init out of range", lambda ds: post_ds(ds, init=[40]), 422, "out of range"),
    ("NaN gap", lambda ds: post_ds(_gap(ds)), 422, "missing or infinite value"),
    ("infinite value", lambda ds: post_ds(_infinite(ds), fmt="netcdf"), 422, "missing or infinite"),
    ("zero steps", lambda ds: post_ds(ds, steps=0), 422, "steps must be >= 1"),
    (
        "not netCDF",
        lambda ds: ("/forecast", b"not a netcdf file", NETCDF, {}),
        400,
        "not a readable netCDF",
    ),
    ("not JSON", lambda ds: ("/forecast", b"{oops", "application/json", {}), 400, "not valid JSON"),
    (
        "JSON layout",
        lambda ds: ("/forecast", b'{"vorticity": [1, 2]}', "application/json", {}),
        400,
        "data_vars",
    ),
    ("empty body", lambda ds: ("/forecast", b"", NETCDF, {}), 400, "empty"),
    ("media type", lambda ds: ("/forecast", b"x", "text/csv", {}), 415, "unsupported Content-Type"),
]


def post_ds(ds, fmt="json", **params):
    if fmt == "json":
        import json

        return ("/forecast", json.dumps(dataset_to_json(ds)).encode(), "application/json", params)
    return ("/forecast", bytes(ds.to_netcdf()), NETCDF, params)


@pytest.mark.parametrize("name, make, status, match", BAD, ids=[b[0] for b in BAD])
def test_each_bad_request_gets_its_4xx_with_a_message(
    students_server, tiny_ds, name, make, status, match
):
    _, client = students_server
    path, body, media, params = make(tiny_ds)
    response = client.post(path, content=body, headers={"content-type": media}, params=params)
    assert response.status_code == status, response.text
    assert match in response.json()["detail"]


def test_nan_under_a_static_mask_is_allowed_and_stays_nan(students_server, students, tiny_ds):
    _, client = students_server
    masked = tiny_ds.copy(deep=True)
    masked["vorticity"][:, :, 0, 0:3] = np.nan  # the same points at every time: land
    response = post(client, masked, "json")
    assert response.status_code == 200, response.text
    got = decode(response)["vorticity"].values
    assert np.isnan(got[:, :, 0, 0:3]).all() and np.isfinite(got[:, :, 1:]).all()
    np.testing.assert_allclose(got, pf.predict(students, masked)["vorticity"].values, atol=1e-6)


def test_an_unknown_answer_format_is_refused(students_server, tiny_ds):
    _, client = students_server
    response = client.post(
        "/forecast",
        content=bytes(tiny_ds.to_netcdf()),
        headers={"content-type": NETCDF, "accept": "text/html"},
    )
    assert response.status_code == 406 and "accept" in response.json()["detail"]


# ------------------------------------------------------------------ load


def test_concurrent_requests_are_batched(students, tiny_ds):
    singles = [tiny_ds.isel(trajectory=[i]) for i in range(6)]
    bodies = [bytes(ds.to_netcdf()) for ds in singles]
    with running(students, max_wait_ms=400.0, max_batch=64) as (_, client):
        responses = concurrently(lambda i: send(client, bodies[i]), 6)
        metrics = client.get("/metrics").json()
    assert [r.status_code for r in responses] == [200] * 6
    for ds, response in zip(singles, responses):
        want = pf.predict(students, ds)["vorticity"].values
        np.testing.assert_allclose(decode(response)["vorticity"].values, want, rtol=1e-5, atol=1e-5)
    assert metrics["batches"]["max_size"] > 1
    assert metrics["batches"]["count"] < 6 and metrics["batches"]["rows"] == 6


def test_a_full_queue_answers_503_and_the_server_stays_up(students, tiny_ds):
    one = tiny_ds.isel(trajectory=[0])
    body = bytes(one.to_netcdf())
    with running(students, queue=2, max_wait_ms=1500.0, max_batch=64) as (_, client):
        responses = concurrently(lambda i: send(client, body), 8)
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1
        busy = next(r for r in responses if r.status_code == 503)
        assert "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
        # still serving, and the queue is empty again
        assert post(client, one).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
        metrics = client.get("/metrics").json()
    assert metrics["requests"]["rejected"] == codes.count(503)
    assert metrics["queue"]["in_flight"] == 0


def test_the_policy_lowers_n_active_under_a_burst_and_restores_it(students, tiny_ds):
    one = tiny_ds.isel(trajectory=[0])
    # 5 ms per window and student, a 20 ms budget: 1 waiting window runs all 3 students,
    # 8 waiting windows run only the first
    cost = CostModel(fixed_ms=0.0, row_ms=0.0, student_ms=5.0)
    config = dict(max_batch=8, max_wait_ms=400.0, latency_budget_ms=20.0, cost=cost)
    with running(students, **config) as (_, client):
        assert post(client, one).status_code == 200
        assert client.get("/metrics").json()["n_active"]["last"] == 3
        body = bytes(one.to_netcdf())
        codes = [r.status_code for r in concurrently(lambda i: send(client, body), 8)]
        burst = client.get("/metrics").json()["n_active"]
        assert post(client, one).status_code == 200
        after = client.get("/metrics").json()["n_active"]
    assert codes == [200] * 8
    assert burst["counts"].get("1", 0) >= 1  # a burst batch ran a single student
    assert after["last"] == 3  # and all three came back once the burst was over
    assert after["policy"]["latency_budget_ms"] == 20.0


def test_the_policy_keeps_its_accuracy_floor(students, tiny_ds):
    one = tiny_ds.isel(trajectory=[0])
    body = bytes(one.to_netcdf())
    cost = CostModel(fixed_ms=0.0, row_ms=0.0, student_ms=5.0)
    config = dict(max_batch=8, max_wait_ms=400.0, latency_budget_ms=20.0, cost=cost, min_active=2)
    with running(students, **config) as (_, client):
        codes = [r.status_code for r in concurrently(lambda i: send(client, body), 8)]
        used = client.get("/metrics").json()["n_active"]["counts"]
    assert codes == [200] * 8 and "1" not in used and "2" in used


def test_shutdown_finishes_the_requests_in_flight(students, tiny_ds):
    app = create_app(students, ServeConfig(max_wait_ms=1500.0, max_batch=64))
    service = app.state.service
    server = BackgroundServer(app).start()
    url = server.url
    result: dict = {}

    def call() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            result["response"] = post(client, tiny_ds.isel(trajectory=[0]))

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    while service.batcher.pending == 0:  # the request waits in the batcher (max_wait)
        assert time.monotonic() < deadline, "the request never reached the batcher"
        time.sleep(0.01)
    t0 = time.monotonic()
    server.stop(timeout=60)
    thread.join(60)
    assert result["response"].status_code == 200
    assert decode(result["response"])["vorticity"].shape == (1, 2, 32, 32)
    assert time.monotonic() - t0 < 60
    assert not service.batcher.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)


def test_the_policy_calibrates_its_costs_at_startup(students, tiny_ds):
    with running(students, latency_budget_ms=1000.0) as (_, client):
        policy = client.get("/metrics").json()["n_active"]["policy"]
        assert post(client, tiny_ds.isel(trajectory=[0])).status_code == 200
        last = client.get("/metrics").json()["n_active"]["last"]
    assert policy["latency_budget_ms"] == 1000.0
    assert policy["cost_ms"]["per_student_window"] > 0
    assert last == 3  # one window fits a generous budget with all students


def test_bad_student_settings_are_refused(teacher, students):
    with pytest.raises(ValueError, match="n_active applies to students"):
        create_app(teacher, ServeConfig(n_active=1))
    with pytest.raises(ValueError, match="n_active must be in 1..3"):
        create_app(students, ServeConfig(n_active=4))
    with pytest.raises(ValueError, match="min_active must be in 1..3"):
        create_app(students, ServeConfig(latency_budget_ms=5.0, min_active=0))
