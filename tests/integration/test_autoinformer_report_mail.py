"""«Отправить отчёт на e-mail» (autoinformer.md §6): the addresses are set on the campaign's «Попытки и
линии» tab (validated, at most 10); when the campaign is stopped, its summary and a signed, expiring link to
the numbers CSV reach a real SMTP sink (aiosmtpd) once, and never again, not after a restart either. The link
works without a session, for its own file only, until it expires."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from tests.helpers import Cabinet, Tenant
from tests.integration.peers.net import free_ports
from tests.web.test_autoinformer_pages import CSV_LIST, add_line, create, enable, seed_results, upload
from vpbx.app import Core
from vpbx.autoinformer import report_mail
from vpbx.autoinformer.report_mail import ReportLink, ReportMailer, open_link, sign_link
from vpbx.clock import FakeClock
from vpbx.pbx.voicemail import SmtpConfig, SmtpMailer
from vpbx.store.models import AiCampaign

BASE = "http://testserver"
SENDER = "vpbx@platform.example"


class Sink:
    """aiosmtpd's handler: every message received, with its envelope recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Sink, SmtpMailer]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_ports(1)[0])
    await asyncio.to_thread(controller.start)
    try:
        yield sink, SmtpMailer(SmtpConfig(host="127.0.0.1", port=controller.port, timeout_s=5.0))
    finally:
        await asyncio.to_thread(controller.stop)


def reporter(core: Core, app: Any, mailer: Any) -> ReportMailer:
    return ReportMailer(
        core.sessions,
        app.state.ai_exports,
        mailer,
        secret=core.settings.secret_key.get_secret_value(),
        base_url=BASE,
        mail_from=SENDER,
        clock=core.clock,
    )


async def state_of(core: Core, cid: str) -> str | None:
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
        return row.report_mail


async def finished_campaign(core: Core, cab: Cabinet, line: str, emails: str) -> str:
    """A campaign with two contacts, one succeeded and one busy, its report addresses set, then stopped."""
    cid = await create(cab, line)
    if emails:
        resp = await cab.post(
            f"/autoinformer/campaigns/{cid}/lines", {"report_emails_shown": "1", "report_emails": emails}
        )
        assert resp.status_code == 303, resp.text[-1500:]
    await upload(cab, cid, CSV_LIST.encode())
    assert (await cab.post(f"/autoinformer/campaigns/{cid}/start")).status_code == 303
    await seed_results(core, cid)
    assert (await cab.post(f"/autoinformer/campaigns/{cid}/stop")).status_code == 303
    return cid


async def test_the_addresses_are_validated_on_the_lines_tab(core: Core, t1: Tenant, admin1: Cabinet) -> None:
    await enable(admin1)
    cid = await create(admin1, await add_line(core, t1))
    url = f"/autoinformer/campaigns/{cid}/lines"
    bad = await admin1.post(
        url, {"report_emails_shown": "1", "report_emails": "boss@acme.example\nnot-an-address"}
    )
    assert (
        bad.status_code == 422 and 'id="f-report_emails"' in bad.text and "not an e-mail address" in bad.text
    )
    many = "\n".join(f"user{i}@acme.example" for i in range(11))
    assert (await admin1.post(url, {"report_emails_shown": "1", "report_emails": many})).status_code == 422
    ok = await admin1.post(
        url,
        {
            "report_emails_shown": "1",
            "report_emails": "boss@acme.example\nops@acme.example, BOSS@acme.example",
        },
    )
    assert ok.status_code == 303
    async with core.sessions() as s:
        row = await s.get(AiCampaign, uuid.UUID(cid))
        assert row is not None
    assert row.settings["report_emails"] == ["boss@acme.example", "ops@acme.example"]  # once each
    page = await admin1.get(url)
    assert "Отправить отчёт на e-mail" in page.text and "boss@acme.example\nops@acme.example" in page.text


async def test_a_stopped_campaign_mails_its_summary_and_link_once(
    core: Core,
    app: Any,
    t1: Tenant,
    t2: Tenant,
    admin1: Cabinet,
    anon: Cabinet,
    smtp: tuple[Sink, SmtpMailer],
) -> None:
    sink, mailer = smtp
    await enable(admin1)
    line = await add_line(core, t1)
    cid = await finished_campaign(core, admin1, line, "boss@acme.example\nops@acme.example")
    quiet = await finished_campaign(core, admin1, line, "")  # no addresses: nothing to send
    assert await state_of(core, cid) == "due" and await state_of(core, quiet) is None

    assert await reporter(core, app, mailer).send_due() == 1
    assert await state_of(core, cid) == "sent"
    [(rcpt, raw)] = sink.messages
    assert sorted(rcpt) == ["boss@acme.example", "ops@acme.example"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Отчёт по рассылке «Напоминание о задолженности»: остановлена"
    assert msg["From"] == SENDER
    body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for line_ in (
        "Контактов: 2",
        "Успешно: 1",
        "Доля успешных: 50.0 %",
        "Среднее время прослушивания: 22.0 с",
    ):
        assert line_ in body, body
    m = re.search(rf"{BASE}({report_mail.LINK_PATH}/[A-Za-z0-9_.-]+)", body)
    assert m, body
    # the link: no session needed, the numbers table as the cabinet exports it
    got = await anon.get(m[1])
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    cabinet = await admin1.get(f"/autoinformer/campaigns/{cid}/export?table=numbers&fmt=csv")
    assert got.content == cabinet.content and got.content.startswith("\ufeff".encode())

    # once: not by the same mailer, nor by a new one (a restart)
    assert await reporter(core, app, mailer).send_due() == 0
    assert len(sink.messages) == 1

    # a tampered, a foreign-keyed or a re-aimed token is not found
    token = m[1].rsplit("/", 1)[1]
    body_part, mac = token.split(".")
    flipped = body_part + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    secret = core.settings.secret_key.get_secret_value()
    link = open_link(secret, token, core.clock.now())
    assert link is not None and link.campaign_id.hex == cid
    other_key = sign_link("another-secret-key-that-is-long-enough-012345", link)
    elsewhere = sign_link(secret, ReportLink(t2.id, link.campaign_id, link.name, link.expires_at))
    for bad in (flipped, other_key, elsewhere, "garbage", token + "x"):
        assert (await anon.get(f"{report_mail.LINK_PATH}/{bad}")).status_code == 404, bad
    # past its expiry (the file's 7 days) the link is dead
    later = FakeClock(dt.datetime.now(dt.UTC) + report_mail.LINK_TTL + dt.timedelta(minutes=1))
    core.clock = later
    app.state.ai_exports.clock = later
    assert (await anon.get(m[1])).status_code == 404


async def test_a_claimed_report_is_never_sent_again_and_a_failure_is_final(
    core: Core, app: Any, t1: Tenant, admin1: Cabinet, smtp: tuple[Sink, SmtpMailer]
) -> None:
    sink, mailer = smtp
    await enable(admin1)
    line = await add_line(core, t1)
    crashed = await finished_campaign(core, admin1, line, "boss@acme.example")
    async with core.sessions() as s:  # a node claimed it, then died before its result was written
        await s.execute(
            update(AiCampaign).where(AiCampaign.id == uuid.UUID(crashed)).values(report_mail="sending")
        )
        await s.commit()
    assert await reporter(core, app, mailer).send_due() == 0
    assert sink.messages == [] and await state_of(core, crashed) == "sending"

    refused = await finished_campaign(core, admin1, line, "boss@acme.example")
    no_server = SmtpMailer(SmtpConfig(host="127.0.0.1", port=free_ports(1)[0], timeout_s=2.0))
    assert await reporter(core, app, no_server).send_due() == 0
    assert await state_of(core, refused) == "failed"
    assert await reporter(core, app, mailer).send_due() == 0  # a failure is not retried: at most once
    assert sink.messages == []
