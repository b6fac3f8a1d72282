from pathlib import Path

import pytest

from apps.tracking import WandbLogger, wandb_credentials


def test_no_credentials_means_offline() -> None:
    assert not wandb_credentials()
    assert WandbLogger().offline


def test_an_api_key_means_online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not WandbLogger().offline


def test_a_netrc_login_means_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials()
    assert not WandbLogger().offline


@pytest.mark.parametrize("mode, offline", [("disabled", False), ("online", False), ("offline", True), ("dryrun", True)])
def test_wandb_mode_in_the_environment_decides(mode: str, offline: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", mode)
    assert WandbLogger().offline is offline


def test_explicit_offline_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger(offline=True).offline
