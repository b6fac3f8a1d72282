"""``python -m apps.<name> serve``: real servers in subprocesses on free loopback ports, real HTTP requests.

The sentiment and translation servers start together (each from a small checkpoint fit here), so their
start-up overlaps; the last test stops the sentiment server with SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apps.serve import RequestCheck, ServingTrainer
from datamodules.base import DataError
from registry import APPS, REPO

LONG = " ".join(["a wonderful and truly unforgettable film"] * 120)  # longer than any max_length here
TEXTS = {
    "sentiment": ["what a great film", "dull and far too long", "", "   ", "I loved it!!!", LONG],
    "translate": ["three", "March 5, 2024", "  twelve   dogs ", "2024", LONG],  # predict skips a blank one: a 422 here
}
FIT = {
    "sentiment": ["--data.dataset=tweets", "--data.vectors=null", "--data.max_vocab_size=2000", "--trainer.limit_train_batches=20",
                  "--model.embedding_dim=16", "--model.hidden_size=16"],
    "translate": ["--data.dataset=cldr", "--data.size=400", "--model.embedding_dim=16", "--model.hidden_size=16",
                  "--model.beam_size=2", "--model.max_length=12"],
}
MAX_INPUTS, MAX_BODY = 32, 1 << 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")  # no Content-Type, as `curl -d` sends a form type
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def predict_rows(url: str, texts: list[str], **extra) -> list[dict]:
    status, body = post(url + "/predict", json.dumps({"inputs": texts, **extra}).encode())
    assert status == 200, body
    return json.loads(body)["predictions"]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Server:
    """``python -m apps.<name> serve`` in a subprocess, on a free loopback port."""

    def __init__(self, name: str, ckpt: Path, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
        for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
            env.pop(key, None)
        self.log = open(folder / f"{name}-serve.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"apps.{name}", "serve", f"--ckpt_path={ckpt}", "--host=127.0.0.1",
             f"--port={self.port}", f"--max_inputs={MAX_INPUTS}", f"--max_body_bytes={MAX_BODY}", "--trainer.logger=false"],
            cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while not healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                pytest.fail(f"the server did not become healthy:\n{self.log.read()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def fit(name: str, folder: Path) -> Path:
    """A small checkpoint of the app, fit in-process."""
    args = ["fit", *FIT[name], "--trainer.max_epochs=1", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.num_sanity_val_steps=0", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--checkpoint.dirpath={folder}"]
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.chdir(folder.parent)
        APPS[name].main(args)
    return folder / "last.ckpt"


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> dict[str, tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("serve")
    ckpts, started = {}, {}
    try:
        for name in TEXTS:  # a server starts up while the next app fits
            ckpts[name] = fit(name, folder / name)
            started[name] = Server(name, ckpts[name], folder)
        for server in started.values():
            server.wait()
        yield {name: (server, ckpts[name]) for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def written_by_predict(name: str, ckpt: Path, texts: list[str], folder: Path) -> list[dict]:
    """The rows `predict --output FILE.jsonl` writes for ``texts``."""
    option = {"sentiment": "--data.predict_texts", "translate": "--data.sentences"}[name]
    output = folder / f"{name}.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):
        APPS[name].main(["predict", f"--ckpt_path={ckpt}", f"{option}={json.dumps(texts)}", f"--output={output}",
                         "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_serve_answers_what_predict_writes(name: str, servers, tmp_path: Path, monkeypatch) -> None:
    server, ckpt = servers[name]
    monkeypatch.chdir(tmp_path)
    served, written = predict_rows(server.url, TEXTS[name]), written_by_predict(name, ckpt, TEXTS[name], tmp_path)
    # Every field exactly, but the probability: served inputs share batches with other requests, and a
    # batch of another shape may round the last bits of a float differently (seen with 2 threads).
    assert [{**r, "probability": None} for r in served] == [{**r, "probability": None} for r in written]
    assert [r["probability"] for r in served] == pytest.approx([r["probability"] for r in written], rel=1e-4)


def test_sixteen_clients_are_all_answered_correctly(servers) -> None:
    server, _ = servers["sentiment"]
    texts = [f"{word} film number {i}" for i, word in enumerate(["good", "bad", "great", "awful"] * 5)]
    expected = {row["input"]: row for row in predict_rows(server.url, texts)}

    def client(i: int) -> dict:
        return predict_rows(server.url, [texts[i % len(texts)]])[0]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(400)))
    for i, answer in enumerate(answers):
        want = expected[texts[i % len(texts)]]
        assert answer["input"] == want["input"] and answer["label"] == want["label"]
        assert answer["probability"] == pytest.approx(want["probability"], abs=1e-6)  # batched with other requests


BAD = [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 422, "inputs"),
    (b'{"texts": ["a"]}', 422, "inputs"),
    (b'{"inputs": "great film"}', 422, "list"),
    (b'{"inputs": []}', 422, "non-empty"),
    (b'{"inputs": ["ok", 3]}', 422, "[1] is int"),
    (b'{"inputs": [null]}', 422, "NoneType"),
    (b'{"inputs": ["ok"], "extra": 1}', 422, "unknown keys"),
    (b'{"inputs": ["ok"], "attention": true}', 422, "no attention"),
    (json.dumps({"inputs": ["ok"] * (MAX_INPUTS + 1)}).encode(), 422, "--max_inputs"),
    (json.dumps({"inputs": ["x" * MAX_BODY]}).encode(), 413, "--max_body_bytes"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[f"{i}-{b[:12]!r}" for i, (b, *_) in enumerate(BAD)])
def test_a_bad_request_gets_a_4xx_and_one_line_and_the_server_stays_healthy(servers, body, status, message) -> None:
    server, _ = servers["sentiment"]
    got, answer = post(server.url + "/predict", body)
    assert got == status
    assert answer.decode().count("\n") <= 1 and message in json.loads(answer)["detail"]
    assert healthy(server.url) and predict_rows(server.url, ["fine"])[0]["input"] == "fine"


def test_translate_refuses_a_blank_text_that_predict_would_skip(servers) -> None:
    server, _ = servers["translate"]
    status, answer = post(server.url + "/predict", b'{"inputs": ["three", "  "]}')
    assert status == 422 and "[1] has nothing to predict" in json.loads(answer)["detail"]
    rows = predict_rows(server.url, ["three"], attention=True)
    source, output, weights = (rows[0]["attention"][key] for key in ("source", "output", "weights"))
    assert len(weights) == len(output) and all(len(row) == len(source) and abs(sum(row) - 1) < 1e-2 for row in weights)


BROWSER = shutil.which("chromium") and shutil.which("chromedriver")


@pytest.mark.skipif(not BROWSER, reason="no headless browser: apt-get install chromium chromium-driver")
def test_the_pages_in_a_headless_browser(servers) -> None:
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        for name in sorted(TEXTS):
            server, text = servers[name][0], TEXTS[name][0]
            browser.get(server.url + "/")
            browser.find_element(By.ID, "text").send_keys(text)
            browser.find_element(By.ID, "go").click()
            result = browser.find_element(By.ID, "result")
            WebDriverWait(browser, 60).until(lambda _: result.get_attribute("data-prediction") is not None)
            row = predict_rows(server.url, [text])[0]
            said = row["translation"] if name == "translate" else row["label"]
            assert result.get_attribute("data-prediction") == said
            assert f"probability {row['probability']:.3f}" in result.text
            cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap td")
            if name == "translate":  # one shaded cell per output token and source token
                attention = predict_rows(server.url, [text], attention=True)[0]["attention"]
                assert len(cells) == len(attention["output"]) * len(attention["source"])
            else:
                assert not cells
    finally:
        browser.quit()


def test_sigterm_stops_the_server_and_its_workers(servers) -> None:
    server, _ = servers["sentiment"]
    children = [int(p) for p in Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()]
    assert children  # the HTTP server and the model's worker run in processes of their own
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(60)
    deadline = time.monotonic() + 15  # multiprocessing's helper processes end once their pipes close
    while [pid for pid in children if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    server.log.seek(0)
    log = server.log.read()
    left = {pid: Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200] for pid in children if alive(pid)}
    assert code == 0 and not left and "server stopped" in log and "Traceback" not in log, (code, left, log[-3000:])
    assert not healthy(server.url)


# -- without a server ---------------------------------------------------------------------------------------


def test_serve_refuses_apps_that_predict_from_files() -> None:
    from datamodules.mnist import MNISTDataModule

    with pytest.raises(DataError, match="predicts from files"):
        ServingTrainer(logger=False).serve(model=None, datamodule=MNISTDataModule(), ckpt_path="x")


@pytest.mark.parametrize(("args", "message"), [([], "serve needs --ckpt_path"), (["--host=example.org"], '"host"')])
def test_bad_serve_options_end_in_one_line(args: list[str], message: str, servers, capsys) -> None:
    _, ckpt = servers["sentiment"]
    ckpt_arg = [] if not args else [f"--ckpt_path={ckpt}"]
    with pytest.raises(SystemExit) as exit_:
        APPS["sentiment"].main(["serve", *ckpt_arg, *args])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize(("option", "message"), [
    ({"port": 80}, "from 1024 to 65535"), ({"max_batch_size": 0}, "--max_batch_size=0"), ({"batch_timeout": -1.0}, "negative"),
    ({"port": "in use"}, "cannot listen there"),
])
def test_bad_serve_values_are_one_line_errors(option: dict, message: str, servers) -> None:
    from datamodules.sentiment import SentimentDataModule

    if option.get("port") == "in use":
        option = {"port": servers["translate"][0].port}
    with pytest.raises(DataError, match=message):
        ServingTrainer(logger=False).serve(model=None, datamodule=SentimentDataModule(), ckpt_path="x", **option)


def test_the_request_check_reads_texts_as_predict_does() -> None:
    from datamodules.translation import TranslationDataModule

    check = RequestCheck(app=None, datamodule=TranslationDataModule(), title="t", max_inputs=4, max_body_bytes=100, attention=True)
    assert check.check(b'{"inputs": ["a b", "c"], "attention": false}') == (200, "")
    assert check.check(b'{"inputs": ["a", ""]}')[0] == 422
    assert check.check(b'{"inputs": ["a"], "attention": "yes"}')[0] == 422
