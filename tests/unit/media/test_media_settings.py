"""The media settings: worker processes by default, one per core but one; ``inline`` on request."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from vpbx.settings import Settings

SECRET = "k" * 40


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VPBX_"):
            monkeypatch.delenv(name)


def test_workers_by_default_one_per_core_but_one() -> None:
    s = Settings(env="test", secret_key=SECRET)
    assert s.media_mode == "workers"
    assert s.media_workers == max(1, len(os.sched_getaffinity(0)) - 1)


def test_mode_and_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPBX_MEDIA_MODE", "inline")
    monkeypatch.setenv("VPBX_MEDIA_WORKERS", "3")
    s = Settings(env="test", secret_key=SECRET)
    assert (s.media_mode, s.media_workers) == ("inline", 3)


@pytest.mark.parametrize(("name", "value"), [("VPBX_MEDIA_MODE", "threads"), ("VPBX_MEDIA_WORKERS", "0")])
def test_bad_media_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(env="test", secret_key=SECRET)
