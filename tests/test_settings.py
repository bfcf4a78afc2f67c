"""API settings come from the environment, a .env file and options, and hide the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatarbatch.cli.environment import client_settings, read_dotenv
from avatarbatch.errors import UsageError
from avatarbatch.runware.client import DEFAULT_API_URL


def test_key_from_the_environment_and_default_url() -> None:
    settings = client_settings({"RUNWARE_API_KEY": "sk-env"})
    assert settings.api_key.get_secret_value() == "sk-env"
    assert settings.api_url == DEFAULT_API_URL


def test_environment_wins_over_dotenv_and_option_over_both(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RUNWARE_API_KEY=sk-file\nRUNWARE_API_URL=http://127.0.0.1:9/v1\n")
    dotenv = read_dotenv(env_file)
    assert client_settings({}, dotenv).api_key.get_secret_value() == "sk-file"
    assert (
        client_settings({"RUNWARE_API_KEY": "sk-env"}, dotenv).api_key.get_secret_value()
        == "sk-env"
    )
    assert client_settings({}, dotenv).api_url == "http://127.0.0.1:9/v1"
    assert client_settings({}, dotenv, api_url="http://other:1/v1").api_url == "http://other:1/v1"


def test_missing_key_explains_both_choices() -> None:
    with pytest.raises(UsageError, match=r"RUNWARE_API_KEY .* --sandbox"):
        client_settings({"RUNWARE_API_KEY": "  "})


def test_non_http_url_is_refused_without_echoing_the_key() -> None:
    with pytest.raises(UsageError) as caught:
        client_settings({"RUNWARE_API_KEY": "sk-secret"}, api_url="ftp://x")
    assert "sk-secret" not in str(caught.value)


def test_missing_dotenv_is_empty(tmp_path: Path) -> None:
    assert read_dotenv(tmp_path / ".env") == {}
