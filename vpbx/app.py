"""Composition root: builds every long-lived object from settings and wires the features together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from vpbx import __version__
from vpbx.clock import Clock, SystemClock
from vpbx.crypto import SecretBox
from vpbx.logs import get_logger
from vpbx.media.prompts import PROMPT_DIR, PromptStore
from vpbx.media.recorder import RECORDING_DIR, LocalRecordingStore
from vpbx.pbx.calls import CallRegistry, MemoryCallRegistry
from vpbx.pbx.registrar import LocationStore, MemoryLocationStore
from vpbx.pbx.trunkmon import TrunkStatusBoard
from vpbx.settings import Settings
from vpbx.store import create_engine, session_factory
from vpbx.store.changes import ConfigVersion, tracked_session_class
from vpbx.store.models import DomainId

log = get_logger("vpbx.app")


@dataclass
class Core:
    """What every feature may use: settings, storage, the clock and the secret box."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    box: SecretBox
    prompts: PromptStore  # uploaded and spoken prompts under <data_dir>/prompts (menus, system phrases)
    recordings: LocalRecordingStore  # call recordings under <data_dir>/recordings (telephony.md §9.3)
    clock: Clock = field(default_factory=SystemClock)
    config: ConfigVersion = field(default_factory=ConfigVersion)  # moves when users or domains change
    # registrations: written by the SIP node, read by the cabinet (telephony.md §9.3)
    location: LocationStore = field(default_factory=MemoryLocationStore)
    # live calls: admitted by the B2BUA, shown by the cabinet (telephony.md §9.3)
    calls: CallRegistry = field(default_factory=MemoryCallRegistry)
    # trunk statuses: written by the trunk monitor, read by the cabinet
    trunks: TrunkStatusBoard = field(default_factory=TrunkStatusBoard)


def build_core(settings: Settings, clock: Clock | None = None) -> Core:
    engine = create_engine(settings.database_url)
    config = ConfigVersion()
    return Core(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine, tracked_session_class(config)),
        box=SecretBox(settings.secret_key.get_secret_value()),
        prompts=PromptStore(settings.data_dir / PROMPT_DIR),
        recordings=LocalRecordingStore(settings.data_dir / RECORDING_DIR),
        clock=clock or SystemClock(),
        config=config,
    )


RECONCILE_TIMEOUT_S = 60.0  # closing a crashed node's calls at start-up; past it the node starts anyway
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Move what start-up built (settings, directory, templates, ORM metadata) out of the collector's sight
    (``gc.freeze``) and run young collections less often. The signalling path allocates many short-lived
    objects; with the defaults, collections over the long-lived heap cost about 15 % of a REGISTER's CPU
    (bench/README.md). Memory stays bounded: cycles are still collected, only later."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def serve(settings: Settings) -> None:
    """``vpbx serve``: the cabinet (uvicorn) and the SIP node in one event loop; SIGTERM stops both."""
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        """uvicorn raises SIGTERM/SIGINT again after its graceful stop, which would kill the process before
        the SIP node stops (BYE to live calls, telephony.md §4); this one only stops and returns."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        exit_hooks: tuple[Callable[[], None], ...] = ()  # run on the loop when the stop begins

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            for hook in self.exit_hooks:
                loop.call_soon_threadsafe(hook)

    from vpbx.integration_api.exports import HistoryExporter
    from vpbx.integration_api.logsweep import LogSweep
    from vpbx.media.backend import InlineMediaBackend, WorkerMediaBackend
    from vpbx.media.recorder import Mp3Encoder
    from vpbx.pbx.b2bua import B2bua
    from vpbx.pbx.bus import InProcessBus
    from vpbx.pbx.calls import CallEvents, EngineDirectory, JsonLinesEventLog
    from vpbx.pbx.history import SPOOL_FILE, SqlCallJournal, reconcile
    from vpbx.pbx.incoming import IncomingRouter
    from vpbx.pbx.ivr_plan import MenuPlans
    from vpbx.pbx.node import SipNode
    from vpbx.pbx.outbound import OutboundRouter
    from vpbx.pbx.recording import CallRecordings, RetentionSweep
    from vpbx.pbx.trunkmon import TrunkMonitor
    from vpbx.pbx.voicemail import VOICEMAIL_DIR, Voicemail, smtp_mailer

    app = create_app(settings)
    core: Core = app.state.core
    bus = InProcessBus()
    if settings.debug_call_events_file:
        bus.subscribe("debug-call-events-file", JsonLinesEventLog(Path(settings.debug_call_events_file)))
    registry = core.calls
    # the call history (telephony.md §3.7): a spool left by the last run is replayed, then the calls this
    # node left open when it died are closed, all before the SIP node takes a call
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    journal = SqlCallJournal(
        core.sessions,
        node_id=settings.node_id,
        spool_path=settings.data_dir / SPOOL_FILE,
        commit_timeout_s=settings.history_commit_timeout_s,
    )
    await journal.start()
    try:
        if journal.spool_pending:  # events of those very calls may still be in it: close them next start
            log.warning("history.reconcile_postponed", reason="spool not replayed")
        else:
            async with asyncio.timeout(RECONCILE_TIMEOUT_S):
                await reconcile(core.sessions, node_id=settings.node_id, bus=bus)
    except Exception:  # a database down at start-up: calls still go on; the orphans wait for the next start
        log.exception("history.reconcile_failed")
    b2bua = B2bua(
        registry=registry,
        events=CallEvents(bus, core.clock, journal=journal),
        clock=core.clock,
        no_answer_s=settings.call_no_answer_s,
    )
    media: InlineMediaBackend | WorkerMediaBackend
    if settings.media_mode == "workers":
        media = WorkerMediaBackend(
            ports=settings.rtp_ports,
            workers=settings.media_workers,
            bind_host=settings.sip_host,
            media_timeout_s=settings.media_timeout_s,
            on_media_timeout=b2bua.on_media_timeout,
            on_session_lost=b2bua.on_media_lost,
            on_dtmf=b2bua.on_dtmf,
            on_play_done=b2bua.on_play_done,
            on_amd=b2bua.on_amd,
            loop=settings.event_loop,
            log_level=settings.log_level,
            log_json=settings.log_json,
        )
        await media.start()
    else:
        media = InlineMediaBackend(
            ports=settings.rtp_ports,
            bind_host=settings.sip_host,
            clock=core.clock,
            media_timeout_s=settings.media_timeout_s,
            on_media_timeout=b2bua.on_media_timeout,
            on_dtmf=b2bua.on_dtmf,
            on_play_done=b2bua.on_play_done,
            on_amd=b2bua.on_amd,
        )
    b2bua.media = media
    app.state.bus = bus  # call events, for the features that subscribe
    app.state.calls = registry  # live calls, for the cabinet
    app.state.b2bua = b2bua  # the call engine, for the features that place calls (call_back, autoinformer)
    node = SipNode(core, location=core.location, calls=b2bua)
    b2bua.attach(node, EngineDirectory(node.directory, default_domain=settings.sip_default_domain))
    await bus.start()
    await node.start()
    trunks = TrunkMonitor(
        node,
        core.sessions,
        core.config,
        core.box,
        clock=core.clock,
        board=core.trunks,
        options_interval_s=settings.trunk_options_interval_s,
        max_misses=settings.trunk_max_misses,
        retry_s=settings.trunk_retry_s,
    )
    await trunks.start()
    app.state.trunks = trunks  # trunk_for_source / outbound_trunks, for the B2BUA
    b2bua.trunks = trunks  # calls from a carrier go to the domains' lines
    b2bua.incoming = IncomingRouter(core.sessions)
    b2bua.outbound = OutboundRouter(core.sessions)
    b2bua.prompts = core.prompts  # the phrase a refused call hears, the menus' greetings
    b2bua.menus = MenuPlans(core.sessions, core.prompts)
    b2bua.broadcaster.sessions = core.sessions  # the call history: a dispatch key dialled before is refused
    app.state.broadcaster = b2bua.broadcaster  # the autoinformer's BroadcastDialer (vpbx.pbx.broadcast)
    if settings.debug_broadcast_token is not None:
        from vpbx.pbx.broadcast_debug import broadcast_route

        token = settings.debug_broadcast_token.get_secret_value()
        app.router.routes.insert(0, broadcast_route(b2bua.broadcaster, core.sessions, token))
    b2bua.routing_hook_deadline_s = settings.routing_hook_deadline_s
    webhook = None
    if settings.debug_routing_hook_url:
        from vpbx.pbx.routing_webhook import HttpRoutingHook

        webhook = HttpRoutingHook(settings.debug_routing_hook_url, timeout_s=settings.routing_hook_deadline_s)
        b2bua.routing_hooks.append(("debug-webhook", webhook))
    # the Integration API's PBX → CRM side (integration-api.md §5): get_number_info, call_events' delivery
    from vpbx.integration_api.dispatcher import Notifications
    from vpbx.integration_api.numberinfo import NumberInfoHook

    number_info = NumberInfoHook(core, cap_s=settings.routing_hook_deadline_s)
    b2bua.routing_hooks.append(("get_number_info", number_info))
    notifications = Notifications(core, mailer=smtp_mailer(settings), mail_from=settings.smtp_from)
    journal.on_commit.append(notifications.wake)  # call_events leave as soon as their events commit
    await notifications.start()
    recordings = CallRecordings(
        media=media, store=core.recordings, sessions=core.sessions, clock=core.clock, encoder=Mp3Encoder()
    )
    await recordings.recover()  # rows a crash left half-way
    b2bua.recordings = recordings
    retention = RetentionSweep(store=core.recordings, sessions=core.sessions, clock=core.clock)
    await retention.start()
    voicemail = Voicemail(
        core.sessions,
        core.prompts,
        settings.data_dir / VOICEMAIL_DIR,
        encoder=recordings.encoder,  # one MP3 process pool for recordings and messages
        mailer=smtp_mailer(settings),
        mail_from=settings.smtp_from,
    )
    b2bua.voicemail = voicemail  # routing's "voicemail", groups' fall-through, users' unanswered calls
    history_exports = HistoryExporter(sessions=core.sessions, data_dir=settings.data_dir, clock=core.clock)
    await history_exports.start()  # builds the pending orders of the last run first
    api_log_sweep = LogSweep(sessions=core.sessions, clock=core.clock)
    await api_log_sweep.start()  # the API log keeps 7 days / 10 000 rows per domain (integration-api.md §6.4)
    app.state.history_exports = history_exports  # domain_call_history wakes it (integration-api.md §4.5)
    await app.state.ai_exports.start()  # sweeps the autoinformer's background exports after 7 days
    from vpbx.autoinformer.wiring import build_dispatcher

    # the autoinformer's dispatcher (autoinformer.md §7); it closes what the last run left open first (§7.2)
    ai_dispatcher = build_dispatcher(
        core, b2bua.broadcaster, registry, trunk_room=lambda d: b2bua.trunk_room(DomainId(d))
    )
    await ai_dispatcher.start()
    from vpbx.autoinformer.report_mail import ReportMailer

    report_smtp = smtp_mailer(settings)
    ai_reports = None
    if report_smtp is not None:  # «Отправить отчёт на e-mail» (autoinformer.md §6) needs the SMTP server
        ai_reports = ReportMailer(
            core.sessions,
            app.state.ai_exports,
            report_smtp,
            secret=settings.secret_key.get_secret_value(),
            base_url=settings.public_url or f"http://{settings.http_host}:{settings.http_port}",
            mail_from=settings.smtp_from,
            clock=core.clock,
        )
        await ai_reports.start()
    from vpbx.amocrm.wiring import AmoRuntime

    amocrm = AmoRuntime(core, app=app, b2bua=b2bua)  # the ИМК routing hook, call events → amoCRM jobs
    await amocrm.start()
    tune_gc()
    media.advertise_host = node.advertised[0]  # SDP c= names the address phones reach us at
    if media.advertise_host in ("0.0.0.0", "::"):
        log.warning("media.unroutable_address", hint="set VPBX_SIP_ADVERTISED_HOST")
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = _GracefulServer(config)
    server.exit_hooks = (amocrm.closing,)  # the widgets' open streams end now, not after the grace period
    try:
        await server.serve()
    finally:
        await ai_dispatcher.halt()  # no new autoinformer calls
        await trunks.stop()
        await node.stop()  # ends the live calls with BYE first
        await ai_dispatcher.stop()  # records the results of the calls that just ended
        if ai_reports is not None:
            await ai_reports.stop()
        await amocrm.stop()
        if webhook is not None:
            await webhook.aclose()
        await retention.stop()
        await history_exports.stop()
        await api_log_sweep.stop()
        await recordings.drain()  # the MP3s of the calls that just ended
        await voicemail.stop()  # the messages of those calls are saved first
        await recordings.encoder.aclose()
        await media.aclose()
        await journal.stop()
        await notifications.stop()
        await number_info.aclose()
        await bus.stop()


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    from vpbx.web.wiring import mount_web  # the web layer imports the features, not the other way round

    core = build_core(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("app.started", version=__version__, env=settings.env)
        api_log = app.state.api_log  # the Integration API's log rows, in batches (vpbx/integration_api)
        await api_log.start()
        try:
            yield
        finally:
            await api_log.stop()
            await app.state.ai_exports.stop()  # builds in progress leave only a .part, swept later
            await core.engine.dispose()
            log.info("app.stopped")

    app = FastAPI(
        title="vpbx", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.core = core
    from vpbx.autoinformer.exports import AiExports

    app.state.ai_exports = AiExports(core.sessions, settings.data_dir, core.clock)  # big report exports (§6)
    from vpbx.integration_api.gateway import mount_api
    from vpbx.integration_api.records import LINK_PREFIX, download_app

    # /api and /api-test, before the cabinet's routes; the recording links of get_record are plain GETs
    mount_api(app, core, raw_routes=[(LINK_PREFIX, download_app(core))])
    from vpbx.amocrm.wiring import PREFIX as AMO_PREFIX
    from vpbx.amocrm.wiring import amo_app

    app.mount(AMO_PREFIX, amo_app(core))  # amoCRM's OAuth, hooks and the widget API (JSON, own CORS)
    from vpbx.amocrm.recordings import recording_route

    app.router.routes.append(recording_route(core))  # /rec/amo/{token}.mp3: amoCRM notes' recording links
    mount_web(app, core)
    return app
