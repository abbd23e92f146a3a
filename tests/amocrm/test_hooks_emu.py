"""E17 with the real client against the emulator: the binding's hook destination subscribed on activation and
removed on disable (amobind's activate/disable call these helpers)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from tests.amocrm.emu_kit import emulator
from tests.amocrm.route_kit import bind_rows
from vpbx.amocrm.client import AmoClientPool
from vpbx.amocrm.hooks import (
    HOOK_EVENTS,
    WebhookSync,
    hook_destination,
    subscribe_webhooks,
    unsubscribe_webhooks,
)
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core
from vpbx.pbx import domains
from vpbx.store.models import CrmBinding


async def test_subscribe_then_unsubscribe_the_bindings_hook(core: Core) -> None:
    async with emulator() as emu:
        core.settings.amocrm.api_url_template = emu.api_url_template
        answer = await emu.token_pair()
        pair = TokenPair(
            access_token=answer["access_token"],
            refresh_token=answer["refresh_token"],
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(answer["expires_in"])),
        )
        async with core.sessions() as s:
            d = await domains.create_domain(s, domains.DomainInput(name="demo.vpbx.test"))
            install, binding, _ = await bind_rows(s, d.id, client_id=emu.client_id)
            await store_tokens(s, core.box, install, pair)
            await s.commit()
        pool = AmoClientPool(core)
        try:
            async with core.sessions() as s:
                row = await s.scalar(select(CrmBinding))
                assert row is not None
                api = pool.for_account(row.external_account_id)
                webhook_id = await subscribe_webhooks(api, core.settings, row)
                await s.commit()
                subscribed = (await emu.state())["webhooks"]
                await unsubscribe_webhooks(api, core.settings, row)
                await s.commit()
                left = (await emu.state())["webhooks"]
        finally:
            await pool.aclose()

    destination = hook_destination(core.settings, binding.hook_secret)
    assert destination == f"http://127.0.0.1:{core.settings.http_port}/amo/hooks/{binding.hook_secret}"
    [hook] = subscribed
    assert (hook["destination"], hook["settings"], str(hook["id"])) == (
        destination,
        list(HOOK_EVENTS),
        webhook_id,
    )
    assert left == [] and row.webhook_id == ""


async def test_the_sync_subscribes_active_bindings_and_unsubscribes_disabled_ones(core: Core) -> None:
    async with emulator() as emu:
        core.settings.amocrm.api_url_template = emu.api_url_template
        answer = await emu.token_pair()
        pair = TokenPair(
            access_token=answer["access_token"],
            refresh_token=answer["refresh_token"],
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(answer["expires_in"])),
        )
        async with core.sessions() as s:
            a = await domains.create_domain(s, domains.DomainInput(name="demo.vpbx.test"))
            b = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.test"))
            install, binding, _ = await bind_rows(s, a.id, client_id=emu.client_id)
            await store_tokens(s, core.box, install, pair)
            # B's account has no authorisation any more, and B was disabled with its hook still recorded
            _, gone, _ = await bind_rows(
                s, b.id, account=30000002, base_domain="other.amocrm.ru", line="+74950000002"
            )
            gone.status, gone.webhook_id = "disabled", "55"
            await s.commit()
        pool = AmoClientPool(core)
        sync = WebhookSync(core, pool)
        try:
            first = await sync.sync_once()
            subscribed = (await emu.state())["webhooks"]
            again = await sync.sync_once()
            async with core.sessions() as s:
                row = await s.get(CrmBinding, binding.id)
                assert row is not None
                recorded = row.webhook_id
                row.status = "disabled"
                await s.commit()
            third = await sync.sync_once()
            left = (await emu.state())["webhooks"]
            async with core.sessions() as s:
                ids = {r.id: r.webhook_id for r in await s.scalars(select(CrmBinding))}
        finally:
            await pool.aclose()

    assert (first, again, third) == (2, 0, 1)
    [hook] = subscribed
    assert hook["destination"].endswith(f"/amo/hooks/{binding.hook_secret}") and str(hook["id"]) == recorded
    assert left == [] and ids == {binding.id: "", gone.id: ""}
