"""``vpbx numbering load FILE`` fills the numbering table from a regulator's file (autoinformer.md §3.3)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import select
from typer.testing import CliRunner

from vpbx import store
from vpbx.cli import app
from vpbx.settings import load_settings
from vpbx.store.models import NumberingRange

SAMPLE = (
    "АВС/ DEF;От;До;Емкость;Оператор;Регион\r\n"
    '383;2000000;2999999;1000000;ПАО "Ростелеком";Новосибирская обл.\r\n'
    '914;2000000;2999999;1000000;ПАО "МТС";Республика Саха /Якутия/\r\n'
    '958;5000000;5009999;10000;ООО "Тест";Неведомая земля\r\n'
)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated data directory; the CLI's logging set-up is undone afterwards (as in test_cli.py)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    for name in list(os.environ):
        if name.startswith("VPBX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VPBX_SECRET_KEY", "numbering-cli-test-secret-key-0123456789")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["migrate", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    yield data
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


async def ranges(data_dir: Path) -> list[tuple[str, str, str | None]]:
    engine = store.create_engine(load_settings(data_dir=data_dir).database_url)
    try:
        async with store.session_factory(engine)() as s:
            rows = await s.execute(
                select(NumberingRange.first, NumberingRange.last, NumberingRange.timezone).order_by(
                    NumberingRange.first
                )
            )
            return [(r.first, r.last, r.timezone) for r in rows]
    finally:
        await engine.dispose()


def test_load_a_cp1251_file(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "DEF-9xx.csv"
    path.write_bytes(SAMPLE.encode("cp1251"))
    result = CliRunner().invoke(app, ["numbering", "load", str(path), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "3 ranges of 3 codes loaded" in result.output
    assert "Неведомая земля" in result.output
    assert asyncio.run(ranges(data_dir)) == [
        ("73832000000", "73832999999", "Asia/Novosibirsk"),
        ("79142000000", "79142999999", "Asia/Yakutsk"),
        ("79585000000", "79585009999", None),
    ]


def test_a_bad_file_loads_nothing_and_names_the_line(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes((SAMPLE + "914;x;1;1;X;Y\r\n").encode())
    result = CliRunner().invoke(app, ["numbering", "load", str(path), "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "line 5, column 2" in result.output
    assert asyncio.run(ranges(data_dir)) == []
