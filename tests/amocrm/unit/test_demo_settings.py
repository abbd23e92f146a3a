"""The demo's amoCRM settings (vpbx/amocrm/demo.py): an emulator on loopback unless a real integration is
configured."""

from __future__ import annotations

from pathlib import Path

from vpbx.amocrm.demo import DemoAmo, default_scenario, demo_info, demo_settings, emulator_url
from vpbx.settings import AmoSettings, Settings


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(env="test", secret_key="x" * 40, data_dir=tmp_path, demo=True, **kw)  # type: ignore[arg-type]


def test_the_demo_points_the_integration_at_a_loopback_emulator(tmp_path: Path) -> None:
    base = _settings(tmp_path)
    assert not DemoAmo.wanted(base) and emulator_url(base) == ""
    s = demo_settings(base)
    url = emulator_url(s)
    assert url.startswith("http://127.0.0.1:") and DemoAmo.wanted(s)
    assert s.amocrm.api_url_template == f"{url}/_acc/{{base_domain}}" and s.amocrm.widget_origins == [url]
    assert s.amocrm.client_id == "6f1c2a7e-0000-4000-8000-000000000001"
    secret = s.amocrm.client_secret
    assert secret is not None and len(secret.get_secret_value()) == 64  # HS256 wants 32 bytes or more
    assert demo_settings(base).amocrm.client_secret == secret  # stable for the instance
    info = demo_info(s)["amocrm"]
    assert info["state_url"] == f"{url}/__emu__/state?account=demo.amocrm.ru"
    assert [u["extension"] for u in info["users"]] == ["101", "102", "103"]
    # without --demo, or with a real integration configured, nothing is started
    assert not DemoAmo.wanted(s.model_copy(update={"demo": False}))
    real = _settings(tmp_path, amocrm=AmoSettings(client_id="real", client_secret="s"))  # type: ignore[arg-type]
    assert demo_settings(real) is real and not DemoAmo.wanted(real)


def test_the_demo_scenario_has_the_imk_and_the_new_client_steps() -> None:
    doc = default_scenario()
    assert doc.smart_routing.enabled
    new = doc.events.incoming.new
    assert new.enabled and new.contact.enabled and new.lead.enabled and new.task.enabled
    assert doc.events.missed.new.enabled and doc.events.missed.new.task.enabled
    assert not doc.events.missed.new.contact.enabled
