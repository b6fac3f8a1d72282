"""Serving: ``python -m apps.sentiment serve`` under 16 concurrent clients, LitServe's batching
(``--max_batch_size=16``, the default) against one request at a time (``--max_batch_size=1``).

Both servers run the same checkpoint (the app's model after a short fit on the bundled tweets) in
one worker process each, and start together; then the clients send one tweet per request over
keep-alive connections, to one server and then the other, in interleaved rounds. A request fails
unless it gets 200 and the one row of its text. The clients run in this process, so on 2 cores they
share the machine with the server's HTTP process and its model worker, as a load test on the
serving machine would.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apps.sentiment.__main__ as sentiment_app
from benchmarks.harness import Row
from datamodules.sentiment import read_tweets

GOAL = 3.0
CLIENTS = 16
REPO = Path(__file__).resolve().parents[1]


def fit(workdir: str, batches: int) -> str:
    """A checkpoint of the sentiment app at its default size after ``batches`` training batches; the
    weights do not change the timing. A tokenizer trained on the tweets stands in for the MiniLM one
    (no download; the same embedding width and LSTM)."""
    args = ["fit", "--data.dataset=tweets", "--data.vectors=null", "--trainer.max_epochs=1", f"--trainer.limit_train_batches={batches}",
            "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", f"--checkpoint.dirpath={workdir}"]
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        sentiment_app.main(args)
    return os.path.join(workdir, "last.ckpt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(checkpoint: str, max_batch_size: int, workdir: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "apps.sentiment", "serve", f"--ckpt_path={checkpoint}", f"--port={port}",
               f"--max_batch_size={max_batch_size}", "--trainer.logger=false"]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


def wait_healthy(process: subprocess.Popen, port: int, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the server on port {port} was not healthy in time")


def load(port: int, texts: list[str], requests: int) -> tuple[float, list[float], int]:
    """``requests`` requests from ``CLIENTS`` threads: wall seconds, each latency, and the failures."""
    latencies: list[float] = []
    failures = 0
    next_request = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        nonlocal failures
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            text = texts[i % len(texts)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", json.dumps({"inputs": [text]}), {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and [row["input"] for row in json.loads(body)["predictions"]] == [text]
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                ok = False
            with lock:
                latencies.append(time.perf_counter() - started)
                failures += not ok

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serving(quick: bool) -> Row:
    requests, rounds = (400, 1) if quick else (5000, 2)
    texts = [" ".join(text.split()) or "ok" for text in read_tweets()[0][:2000]]
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = fit(workdir, 5 if quick else 50)
        servers = {size: start(checkpoint, size, workdir) for size in (16, 1)}
        try:
            for process, port in servers.values():
                wait_healthy(process, port)
            for _, port in servers.values():  # warm up both: first requests pay for lazy set-up
                load(port, texts, 2 * CLIENTS)
            results: dict[int, list[tuple[float, list[float], int]]] = {16: [], 1: []}
            for round_ in range(rounds):
                for size in ((16, 1) if round_ % 2 == 0 else (1, 16)):
                    results[size].append(load(servers[size][1], texts, requests))
        finally:
            for process, _ in servers.values():
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(60)

    def summary(size: int) -> tuple[float, float, float, int]:
        seconds = sum(r[0] for r in results[size])
        latencies = [t for r in results[size] for t in r[1]]
        return len(latencies) / seconds, statistics.median(latencies), percentile(latencies, 0.99), sum(r[2] for r in results[size])

    batched, single = summary(16), summary(1)
    speedup = batched[0] / single[0]
    n = requests * rounds

    def described(figures: tuple[float, float, float, int]) -> str:
        rate, p50, p99, failed = figures
        return f"{rate:,.0f} requests/s, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, {failed} failed of {n:,}"

    return Row(
        name=f"Serving, sentiment app: LitServe batching (max_batch_size 16) / one request at a time, {CLIENTS} clients",
        measured=f"{speedup:.2f}x; batched: {described(batched)}; one at a time: {described(single)}",
        goal=f">= {GOAL:g}x, no failed request",
        met=speedup >= GOAL and batched[3] == 0 and single[3] == 0,
        data=f"{n:,} requests per setting in {rounds} interleaved round(s), one tweet each (the bundled corpus); "
             "the app's default model, one worker process; clients on the same machine",
    )
