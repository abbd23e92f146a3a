"""«Отправить отчёт на e-mail» (autoinformer.md §6): when a campaign reaches ``completed`` or ``stopped``, its
summary (contacts per status, success rate, average listening time) and a signed, expiring link to its
numbers table as CSV go to the campaign's addresses through the platform's SMTP server, once.

``status.set_status`` marks the campaign ``report_mail = "due"`` in the transaction of the move. The
``ReportMailer`` of ``vpbx serve`` claims a due campaign by moving it to ``sending`` in its own commit,
then builds the CSV (``exports.write_file``), sends, and records ``sent`` or ``failed``. A claimed campaign
is never claimed again, so a restart never sends a second e-mail (one lost in a crash mid-send stays lost:
the report is in the cabinet). A stopped campaign's calls in progress end normally; the mail waits for
them, at most ``SETTLE``, so the summary counts them.

The link ``<public_url>/autoinformer-report/<token>`` needs no session: the token names the domain, the
campaign and the file with an expiry, signed with a key derived from the platform's secret key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
import zoneinfo
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.autoinformer import exports
from vpbx.autoinformer.campaigns import campaign_stats
from vpbx.background import BackgroundLoop
from vpbx.clock import Clock
from vpbx.logs import get_logger
from vpbx.store.models import AiAttempt, AiCampaign, Domain

log = get_logger("vpbx.autoinformer.report_mail")

LINK_PATH = "/autoinformer-report"
LINK_TTL = exports.KEEP  # the link lives as long as the file it points at
POLL_S = 30.0
SETTLE = dt.timedelta(minutes=5)  # how long a finished campaign's calls in progress may hold its e-mail back
BATCH = 20  # due campaigns looked at per round
_KEY_LABEL = b"vpbx-ai-report-link-v1:"
_STATUS_WORD = {"completed": "завершена", "stopped": "остановлена"}


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


# --- the link ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportLink:
    domain_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str  # the export file's name
    expires_at: dt.datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    key = hashlib.sha256(_KEY_LABEL + secret.encode()).digest()
    return hmac.new(key, payload, hashlib.sha256).digest()


def sign_link(secret: str, link: ReportLink) -> str:
    payload = json.dumps(
        [link.domain_id.hex, link.campaign_id.hex, link.name, int(link.expires_at.timestamp())],
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def open_link(secret: str, token: str, now: dt.datetime) -> ReportLink | None:
    """The link a token names, if its signature holds and it has not expired; None otherwise."""
    if len(token) > 512 or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    try:
        payload = _unb64(body)
        if not hmac.compare_digest(_unb64(mac), _mac(secret, payload)):
            return None
        domain_hex, campaign_hex, name, expires = json.loads(payload)
        link = ReportLink(
            uuid.UUID(hex=domain_hex),
            uuid.UUID(hex=campaign_hex),
            str(name),
            dt.datetime.fromtimestamp(expires, dt.UTC),
        )
    except (ValueError, TypeError):
        return None
    return link if now < link.expires_at else None


# --- the e-mail --------------------------------------------------------------------------------------------


def build_message(
    campaign: AiCampaign,
    domain: Domain,
    counters: dict[str, int],
    *,
    attempted: int,
    attempts: int,
    avg_listen_s: float,
    url: str,
    expires_at: dt.datetime,
    sender: str,
) -> EmailMessage:
    """The summary in Russian, as the cabinet's report shows it (§6), with the link to the CSV."""
    try:
        tz = zoneinfo.ZoneInfo(domain.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = zoneinfo.ZoneInfo("Europe/Moscow")
    finished = (campaign.finished_at or expires_at - LINK_TTL).astimezone(tz)
    word = _STATUS_WORD.get(campaign.status, campaign.status)
    rate = f"{100 * counters.get('succeeded', 0) / attempted:.1f} %" if attempted else "—"
    statuses = "\n".join(f"  {k}: {v}" for k, v in counters.items() if k != "total" and v)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(spec_emails(campaign))
    msg["Subject"] = f"Отчёт по рассылке «{campaign.name}»: {word}"
    msg.set_content(
        f"Рассылка «{campaign.name}» домена {domain.name} {word} "
        f"{finished:%d.%m.%Y %H:%M} ({domain.timezone}).\n\n"
        f"Контактов: {counters.get('total', 0)}\n"
        f"С попытками: {attempted}\n"
        f"Успешно: {counters.get('succeeded', 0)}\n"
        f"Доля успешных: {rate}\n"
        f"Среднее время прослушивания: {avg_listen_s:.1f} с\n"
        f"Попыток всего: {attempts}\n"
        f"По статусам:\n{statuses or '  —'}\n\n"
        f"Номера с результатами (CSV): {url}\n"
        f"Ссылка действует до {expires_at.astimezone(tz):%d.%m.%Y %H:%M}.\n"
    )
    return msg


def spec_emails(campaign: AiCampaign) -> list[str]:
    value = campaign.settings.get("report_emails") or []
    return [str(e) for e in value]


# --- the sender --------------------------------------------------------------------------------------------


class ReportMailer(BackgroundLoop):
    """Sends due campaign reports (a ``BackgroundLoop``: a failed round is logged, the next runs)."""

    name = "ai-report-mail"
    failure_event = "ai_report_mail.round_failed"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        exports_: exports.AiExports,
        mailer: Mailer,
        *,
        secret: str,
        base_url: str,
        mail_from: str,
        clock: Clock,
        poll_s: float = POLL_S,
    ) -> None:
        self.sessions = sessions
        self.exports = exports_
        self.mailer = mailer
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self.mail_from = mail_from
        self.clock = clock
        self.interval_s = poll_s

    async def run_once(self) -> float | None:
        await self.send_due()
        return None

    async def send_due(self) -> int:
        """Send every due report that is ready to go; how many were sent."""
        async with self.sessions() as s:
            due = (
                await s.scalars(
                    select(AiCampaign.id)
                    .where(AiCampaign.report_mail == "due")
                    .order_by(AiCampaign.finished_at, AiCampaign.id)
                    .limit(BATCH)
                )
            ).all()
        sent = 0
        for campaign_id in due:
            if await self.send_one(campaign_id):
                sent += 1
        return sent

    async def _claim(self, campaign_id: uuid.UUID, now: dt.datetime) -> bool:
        async with self.sessions() as s:
            campaign = await s.get(AiCampaign, campaign_id)
            if campaign is None or campaign.report_mail != "due":
                return False
            in_call = await s.scalar(
                select(exists().where(AiAttempt.campaign_id == campaign_id, AiAttempt.state != "done"))
            )
            finished = campaign.finished_at or now
            if in_call and now < finished + SETTLE:
                return False  # the calls still running count in the summary: the next round
            claimed = await s.execute(
                update(AiCampaign)
                .where(AiCampaign.id == campaign_id, AiCampaign.report_mail == "due")
                .values(report_mail="sending")
            )
            await s.commit()
            return getattr(claimed, "rowcount", 0) == 1

    async def send_one(self, campaign_id: uuid.UUID) -> bool:
        now = self.clock.now()
        if not await self._claim(campaign_id, now):
            return False
        outcome = "failed"
        try:
            async with self.sessions() as s:
                campaign = await s.get(AiCampaign, campaign_id)
                domain = await s.get(Domain, campaign.domain_id) if campaign else None
                if campaign is None or domain is None:
                    return False
                name = exports.new_name(now, "numbers", "csv")
                target = exports.campaign_dir(self.exports.data_dir, domain.id, campaign.id) / name
                await exports.write_file(
                    s, target, campaign.id, "numbers", "csv", exports.Filters(), domain.timezone
                )
                stats = await campaign_stats(s, campaign)
                link = ReportLink(domain.id, campaign.id, name, now + LINK_TTL)
                message = build_message(
                    campaign,
                    domain,
                    stats.counters,
                    attempted=stats.attempted_contacts,
                    attempts=stats.attempts_made,
                    avg_listen_s=stats.avg_listen_s,
                    url=f"{self.base_url}{LINK_PATH}/{sign_link(self.secret, link)}",
                    expires_at=link.expires_at,
                    sender=self.mail_from or f"vpbx@{domain.name}",
                )
            await self.mailer.send(message)
            outcome = "sent"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ai_report_mail.failed", campaign_id=campaign_id.hex, error=repr(exc)[:300])
        finally:
            async with self.sessions() as s:
                await s.execute(
                    update(AiCampaign)
                    .where(AiCampaign.id == campaign_id, AiCampaign.report_mail == "sending")
                    .values(report_mail=outcome)
                )
                await s.commit()
        log.info("ai_report_mail.done", campaign_id=campaign_id.hex, outcome=outcome)
        return outcome == "sent"
