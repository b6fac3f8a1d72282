"""``python -m apps.<name> serve --ckpt_path CKPT``: the checkpoint behind an HTTP endpoint, on LitServe.

    python -m apps.sentiment serve --ckpt_path CKPT --port 8000
    curl -s localhost:8000/predict -d '{"inputs": ["great film", "dull"]}'

- ``GET /health``: 200 once the model is loaded.
- ``POST /predict`` with ``{"inputs": [text, ...]}`` answers ``{"predictions": [row, ...]}``, one row per
  input: the row ``predict --output FILE.jsonl`` writes for it. The model, its tokenizer and any
  ``--model.*``/``--data.*`` override come from the command line and checkpoint exactly as for ``predict``,
  and each batch runs through ``Trainer.predict`` (the DataModule's encoding, ``predict_step``).
  ``"attention": true`` adds each translation's attention (apps whose model has ``greedy_attention``).
- ``GET /``: a small page to try the model in a browser.

A bad request gets a 4xx status and one line of JSON, ``{"detail": "..."}``, checked before it reaches
the model, so the batch it would have joined is not spoilt and the server stays healthy. LitServe
batches the requests of concurrent clients (``--max_batch_size``, ``--batch_timeout``) and runs the
model in ``--workers`` processes of their own. SIGTERM (or Ctrl+C) stops the server and its workers.
Apps whose predict inputs are files (the image apps) do not serve: their DataModule names no option
that takes texts (``inline_inputs``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import litserve as ls
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from datamodules.base import DataError

PAGE = Path(__file__).with_name("serve.html")
PROBE = "ok"  # a text every text app predicts; the worker's first prediction loads the checkpoint


def inline_option(datamodule: LightningDataModule) -> str:
    """The ``--data.*`` option through which ``predict`` takes texts inline; "" when it takes files only."""
    return getattr(datamodule, "inline_inputs", "")


def read_inputs(datamodule: LightningDataModule, texts: list[str]) -> list[str]:
    """Give ``texts`` to the DataModule as ``predict`` would get them on the command line, and return
    the input names its ``load_predict`` reads from them (one per text it predicts, in order)."""
    datamodule.hparams[inline_option(datamodule)] = list(texts)
    if "predict_path" in datamodule.hparams:
        datamodule.hparams.predict_path = None
    return datamodule.load_predict()


def predictable(datamodule: LightningDataModule, text: str) -> bool:
    """Whether ``predict`` gives ``text`` a row (the translation app skips a blank line)."""
    try:
        return len(read_inputs(datamodule, [text])) == 1
    except DataError:
        return False


class PredictAPI(ls.LitAPI):
    """The model and DataModule that the CLI built for ``serve``, run by LitServe in worker processes.

    ``setup`` makes a Trainer for the worker's device and predicts ``PROBE`` once with ``ckpt_path``, so
    Lightning loads the weights and the tokenizer from the checkpoint as it does for ``predict``. A
    request is a list of texts; a batch of requests is predicted in one ``Trainer.predict`` call.
    """

    def __init__(self, model: LightningModule, datamodule: LightningDataModule, ckpt_path: str, weights_only: bool | None,
                 precision: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model, self.datamodule, self.precision = model, datamodule, precision
        self.ckpt_path, self.weights_only = ckpt_path, weights_only

    def setup(self, device: str) -> None:
        # This process only predicts: the checkpoint's ModelCheckpoint settings are not needed here.
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # as in apps/cli.py
        kind, _, index = str(device).partition(":")
        self.trainer = Trainer(
            accelerator=kind, devices=[int(index)] if index else 1, precision=self.precision, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )
        self.rows([PROBE], ckpt_path=self.ckpt_path)

    def rows(self, texts: list[str], ckpt_path: str | None = None) -> list[dict[str, Any]]:
        """The rows ``predict`` writes for ``texts``: each input beside its ``predict_step`` record."""
        read_inputs(self.datamodule, texts)
        batches = self.trainer.predict(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path,
                                       weights_only=self.weights_only)
        records = [record for batch in batches for record in batch]
        return [{"input": name, **record} for name, record in zip(self.datamodule.predict_inputs, records)]

    def attention(self, texts: list[str]) -> list[dict[str, Any]]:
        """Each text's greedy attention: output tokens over source tokens, as the test run draws it."""
        self.datamodule.predict_inputs = read_inputs(self.datamodule, texts)
        maps = []
        self.model.eval()
        with torch.inference_mode():
            for batch in self.datamodule.predict_dataloader():
                maps += self.model.greedy_attention(self.model.transfer_batch_to_device(batch, self.model.device, 0))
        return [{"source": source, "output": output, "weights": [[round(w, 3) for w in row] for row in weights.tolist()]}
                for source, output, weights in maps]

    def decode_request(self, request) -> tuple[list[str], bool]:  # noqa: ANN001 - LitServe reads a type here as a schema
        return request["inputs"], bool(request.get("attention"))

    def batch(self, inputs: list[tuple[list[str], bool]]) -> list[tuple[list[str], bool]]:
        return inputs  # requests stay apart; `predict` joins their texts

    def predict(self, x: Any) -> Any:
        requests = x if self.max_batch_size > 1 else [x]
        rows = self.rows([text for texts, _ in requests for text in texts])
        answers, start = [], 0
        for texts, attention in requests:
            answers.append(rows[start:start + len(texts)])
            if attention:
                for row, weights in zip(answers[-1], self.attention(texts)):
                    row["attention"] = weights
            start += len(texts)
        return answers if self.max_batch_size > 1 else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": output}


Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestCheck:
    """ASGI middleware in front of LitServe: serves the page at ``GET /`` and answers a bad
    ``POST /predict`` itself, with a 4xx and one line of JSON. A good body goes on as JSON whatever
    its Content-Type (``curl -d`` sends a form type)."""

    def __init__(self, app: Callable, datamodule: LightningDataModule, title: str, max_inputs: int,
                 max_body_bytes: int, attention: bool) -> None:
        self.app, self.datamodule, self.title = app, datamodule, title
        self.max_inputs, self.max_body_bytes, self.attention = max_inputs, max_body_bytes, attention

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/" and scope["method"] == "GET":
            page = PAGE.read_text(encoding="utf-8").replace("{{title}}", self.title)
            page = page.replace("{{attention}}", "true" if self.attention else "false")
            return await respond(send, 200, page.encode(), b"text/html; charset=utf-8")
        if scope["path"] != "/predict" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body, problem = await read_body(receive, self.max_body_bytes)
        if problem:
            return await error(send, 413, problem)
        status, problem = self.check(body)
        if problem:
            return await error(send, status, problem)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if any
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    def check(self, body: bytes) -> tuple[int, str]:
        """The status and one-line reason for a bad body; (200, "") for a good one."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return 400, f"body is not JSON ({err.__class__.__name__}: {' '.join(str(err).split())})"
        if not isinstance(request, dict) or "inputs" not in request:
            return 422, 'expected a JSON object {"inputs": [text, ...]}'
        unknown = sorted(set(request) - {"inputs", "attention"})
        if unknown:
            return 422, f"unknown keys {unknown}: a request has \"inputs\"" + (' and "attention"' if self.attention else "")
        if "attention" in request and not self.attention:
            return 422, "this model has no attention to show"
        if not isinstance(request.get("attention", False), bool):
            return 422, '"attention" is true or false'
        texts = request["inputs"]
        if not isinstance(texts, list) or not texts:
            return 422, f'"inputs" must be a non-empty list of texts, not {json.dumps(texts)[:40]}'
        if len(texts) > self.max_inputs:
            return 422, f'{len(texts)} inputs: at most {self.max_inputs} a request (--max_inputs)'
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                return 422, f'"inputs"[{i}] is {type(text).__name__}, not a text'
            if not predictable(self.datamodule, text):
                return 422, f'"inputs"[{i}] has nothing to predict (predict skips a blank text)'
        return 200, ""


async def read_body(receive: Callable, limit: int) -> tuple[bytes, str]:
    """The whole request body, or a reason when it is over ``limit`` bytes (read no further)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", "the client went away"
        size += len(message.get("body", b""))
        if size > limit:
            return b"", f"body over {limit} bytes (--max_body_bytes)"
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), ""


async def respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def error(send: Send, status: int, detail: str) -> None:
    await respond(send, status, json.dumps({"detail": detail}).encode() + b"\n", b"application/json")


def check_port(host: str, port: int) -> None:
    """Fail in one line, before any worker starts, when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise DataError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


def stop_on_sigterm(server: ls.LitServer) -> None:
    """SIGTERM stops the server as LitServe's own shutdown endpoint does: by setting its shutdown event,
    after which it stops its HTTP servers and workers (a second SIGTERM is ignored). Raising
    ``KeyboardInterrupt`` instead would leave LitServe's worker monitor running while the workers stop,
    and it would shut down a second time. ``_shutdown_event`` is private; the SIGTERM test in
    ``tests/test_serve.py`` fails when it changes. The HTTP server processes, forked from this one, end quietly."""
    server_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != server_pid:
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        event = server._shutdown_event
        if event is None:  # still starting: stop as on Ctrl+C
            raise KeyboardInterrupt
        threading.Thread(target=event.set).start()  # a manager proxy: not from the thread waiting on it

    signal.signal(signal.SIGTERM, handler)


class ServingTrainer(Trainer):
    """The apps' Trainer: Lightning's, plus the ``serve`` subcommand."""

    def serve(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        ckpt_path: str | None = None,
        host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
        port: int = 8000,
        max_batch_size: int = 16,
        batch_timeout: float = 0.005,
        workers: int = 1,
        max_inputs: int = 64,
        max_body_bytes: int = 1 << 20,
        weights_only: bool | None = None,
    ) -> None:
        """Serve the checkpoint's model over HTTP (GET / for a page, POST /predict, GET /health).

        Args:
            model: The model, built as for ``predict``.
            datamodule: The DataModule, built as for ``predict``; it encodes each request's texts.
            ckpt_path: The checkpoint written by ``fit``; the weights and tokenizer come from it.
            host: Address to listen on; ``0.0.0.0`` (or ``::``) also listens beyond this machine.
            port: TCP port to listen on (1024 or above).
            max_batch_size: Most requests LitServe predicts together (1: one request at a time).
            batch_timeout: Seconds LitServe waits for more requests to fill a batch.
            workers: Worker processes, each with its own copy of the model (per device).
            max_inputs: Most texts in one request.
            max_body_bytes: Largest request body; a larger one gets 413.
            weights_only: Load tensors and plain data only from the checkpoint, as ``predict`` does (the
                CLI sets it unless told otherwise).
        """
        name = type(datamodule).__name__
        if not inline_option(datamodule):
            raise DataError(f"serve takes texts, and {name} predicts from files: use `predict --output FILE`")
        if not 1024 <= port <= 65535:
            raise DataError(f"--port={port}: must be from 1024 to 65535")
        for option, value in (("--max_batch_size", max_batch_size), ("--workers", workers), ("--max_inputs", max_inputs),
                              ("--max_body_bytes", max_body_bytes)):
            if value < 1:
                raise DataError(f"{option}={value}: must be a positive number")
        if batch_timeout < 0:
            raise DataError(f"--batch_timeout={batch_timeout}: must not be negative")
        check_port(host, port)
        for attribute in ("optimizer", "scheduler"):  # training only; they refer to this process's Trainer and loggers
            if hasattr(model, attribute):
                setattr(model, attribute, None)
        api = PredictAPI(model, datamodule, ckpt_path, weights_only, self.precision, max_batch_size, batch_timeout)
        attention = callable(getattr(model, "greedy_attention", None)) and getattr(model.hparams, "attention", "") != "none"
        check = (RequestCheck, {"datamodule": datamodule, "title": type(model).__name__, "max_inputs": max_inputs,
                                "max_body_bytes": max_body_bytes, "attention": attention})
        accelerator = "cuda" if self.strategy.root_device.type == "cuda" else "cpu"
        server = ls.LitServer(api, accelerator=accelerator, workers_per_device=workers, middlewares=[check])
        stop_on_sigterm(server)
        print(f"serving {ckpt_path} on http://{host}:{port} (page: /, POST /predict, GET /health)", file=sys.stderr, flush=True)
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
        print("server stopped", file=sys.stderr, flush=True)
