"""Process settings: ``VPBX_*`` environment variables (``__`` nests), optional TOML files, CLI overrides.

Priority, highest first: CLI options, environment, ``VPBX_CONFIG_FILE``, ``<data_dir>/secrets.toml``
(written by ``vpbx serve --demo`` on first start), defaults. Production refuses empty or placeholder secrets.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from vpbx.errors import ConfigError

PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "default", "vpbx", "test", "xxx"}
)
MIN_SECRET_LEN = 32
SECRETS_FILE = "secrets.toml"


class LoginPolicy(BaseSettings):
    max_failures: int = Field(default=5, ge=1, le=100)
    window_s: int = Field(default=900, ge=10)
    lockout_s: int = Field(default=900, ge=10)


class AmoSettings(BaseSettings):
    """The amoCRM integration (amocrm.md §2.1–2.2, §2.5): our registered public integration and the client's
    limits. Without ``client_id`` and ``client_secret`` the integration is off (the cabinet says so)."""

    client_id: str = ""  # the integration's UUID from amoCRM
    client_secret: SecretStr | None = None  # signs the widget's tokens and the disconnect hook; never logged
    # where an account's API lives; tests and the demo point it at the emulator
    api_url_template: str = "https://{base_domain}"
    # base domains accepted besides *.amocrm.ru / *.amocrm.com / *.kommo.com (the emulator's test hosts)
    extra_hosts: list[str] = Field(default_factory=list)
    # origins allowed to call the widget API besides https://*.amocrm.ru|com, *.kommo.com (the harness)
    widget_origins: list[str] = Field(default_factory=list)
    order_url: str = ""  # «Создать»: the PBX order page
    rps: float = Field(default=5.0, gt=0, le=7)  # per account, below amoCRM's 7 rps
    lookup_timeout_ms: int = Field(default=1500, ge=300, le=3000)  # the ИМК's realtime budget
    source_name: str = "Виртуальная АТС"  # params.source of call notes
    # the job runner (§5.7): its retry waits (10 s, 30 s … then hourly) times this, and a running job's lease
    # (the jobs of a killed process wait it out); tests shorten both
    job_retry_scale: float = Field(default=1.0, gt=0, le=1)
    job_lease_s: float = Field(default=120.0, ge=3, le=3600)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VPBX_", env_nested_delimiter="__", extra="ignore")

    env: Literal["development", "test", "production"] = "production"
    secret_key: SecretStr = SecretStr("")
    data_dir: Path = Path("data")
    database_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    sip_host: str = "0.0.0.0"
    sip_port: int = Field(default=5060, ge=0, le=65535)
    # NoDecode: VPBX_RTP_PORTS=A-B reaches the validator as text instead of being parsed as JSON.
    rtp_ports: Annotated[tuple[int, int], NoDecode] = (10000, 20000)
    # the address phones and peers reach us at (Via, Contact, SDP); empty: the SIP bind address
    sip_advertised_host: str = ""
    # the tenant for requests whose domain part is an address, not one of our domains (single-tenant boxes)
    sip_default_domain: str = ""
    # sources never banned (trunks, admin networks), as CIDRs; from the environment a JSON list
    sip_allowlist: list[str] = Field(default_factory=list)
    # SIP over TLS (telephony.md §3.2): on when a certificate and its key are set (PEM files); port 0 = off
    sip_tls_port: int = Field(default=5061, ge=0, le=65535)
    sip_tls_cert: str = ""
    sip_tls_key: str = ""
    # a certificate per SIP domain, chosen by SNI: <domain>.pem and <domain>.key files here (empty: none)
    sip_tls_domain_certs_dir: str = ""
    # NAT keep-alive: OPTIONS to every nated UDP binding this often (0: off); a binding whose OPTIONS go
    # unanswered this many times in a row is dropped (0: never, only logged)
    sip_keepalive_interval_s: float = Field(default=25.0, ge=0, le=3600)
    sip_keepalive_max_misses: int = Field(default=3, ge=0, le=100)
    # SIP trunks (telephony.md §3.2): OPTIONS to every enabled trunk this often, down after this many
    # unanswered in a row; a failed registration is retried after trunk_retry_s, doubling up to 10 minutes
    trunk_options_interval_s: float = Field(default=30.0, gt=0, le=3600)
    trunk_max_misses: int = Field(default=3, ge=1, le=100)
    trunk_retry_s: float = Field(default=30.0, gt=0, le=3600)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # auto: uvloop when installed
    # calls (telephony.md §3.7): ring this long before 480; end answered calls whose RTP stops this long
    call_no_answer_s: float = Field(default=60.0, gt=0, le=3600)
    media_timeout_s: float = Field(default=60.0, gt=0, le=86400)
    # RTP relay (telephony.md §2): in worker processes, each with a share of rtp_ports, or on the main loop
    media_mode: Literal["inline", "workers"] = "workers"
    media_workers: int = Field(default_factory=lambda: default_media_workers(), ge=1, le=64)
    # e-mail (voicemail notifications) through the platform's SMTP server; an empty host: no e-mail
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_user: str = ""
    smtp_password: SecretStr | None = None  # optional, so never refused as a placeholder; never logged
    smtp_from: str = "vpbx@localhost"
    smtp_starttls: bool = False
    # this node's name on its call records (telephony.md §9.3 rule 3); the start-up reconciler closes the
    # records of this node only
    node_id: str = Field(default_factory=lambda: default_node_id(), min_length=1, max_length=64)
    # the call history: a commit slower than this spools its events to <data_dir>/call-history.spool.jsonl
    history_commit_timeout_s: float = Field(default=5.0, gt=0, le=300)
    # tests only: append every call event to this file as a JSON line (empty: off)
    debug_call_events_file: str = ""
    # debugging aid: ask this URL where calls on lines go (vpbx.pbx.routing_webhook; empty: off), and how long
    # any routing hook may take before the domain's rules route the call (platform cap 3 s, telephony.md §3.7)
    debug_routing_hook_url: str = ""
    # tests only: POST /debug/broadcast with this bearer token places an autoinformer call and answers its
    # result (vpbx.pbx.broadcast_debug; unset: no such route)
    debug_broadcast_token: SecretStr | None = None
    routing_hook_deadline_s: float = Field(default=3.0, gt=0, le=3.0)
    public_url: str = ""
    # the Integration API's public base URLs ({API}, {API_TEST}: links we hand out, demo.json); empty:
    # <public_url>/api and <public_url>/api-test (integration-api.md §1); served on the HTTP port either way
    api_url: str = ""
    api_test_url: str = ""
    # platform proxies in front of the HTTP port (CIDRs): only their X-Forwarded-For / X-Forwarded-Proto count
    # for the Integration API's source IP and HTTPS checks (§2.4, §2.5); from the environment a JSON list
    trusted_proxies: list[str] = Field(default_factory=list)
    # the PEM chain {API} serves («Скачать сертификат API», §2.5; empty: no TLS) and the PBX's egress
    # addresses shown to CRMs (§2.4)
    api_tls_cert: str = ""
    api_egress_ips: list[str] = Field(default_factory=list)
    log_json: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    session_ttl_s: int = Field(default=12 * 3600, ge=60)
    login: LoginPolicy = LoginPolicy()
    default_language: Literal["ru", "en"] = "ru"
    demo: bool = False
    amocrm: AmoSettings = AmoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = settings_cls.model_config.get("toml_file") or []
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=files))

    @field_validator("rtp_ports", mode="before")
    @classmethod
    def _parse_ports(cls, v: object) -> object:
        if isinstance(v, str):
            lo, sep, hi = v.partition("-")
            if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
                raise ValueError("expected A-B, e.g. 10000-20000")
            return (int(lo), int(hi))
        return v

    @field_validator("rtp_ports")
    @classmethod
    def _check_ports(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not (1024 <= lo < hi <= 65535) or (hi - lo) < 1:
            raise ValueError("RTP port range must be A-B with 1024 <= A < B <= 65535")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {entry!r}") from None
        return v

    @field_validator("sip_tls_key")
    @classmethod
    def _tls_pair(cls, v: str, info: ValidationInfo) -> str:
        if bool(v) != bool(info.data.get("sip_tls_cert")):
            raise ValueError("the TLS certificate and key are set together (VPBX_SIP_TLS_CERT) or not at all")
        return v

    @model_validator(mode="after")
    def _defaults_and_placeholders(self) -> Self:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'vpbx.sqlite3'}"
        if self.env == "production":
            refuse_placeholders(self)
        return self

    @property
    def sip_tls(self) -> bool:
        """Whether ``vpbx serve`` listens for SIP over TLS."""
        return bool(self.sip_tls_cert and self.sip_tls_key and self.sip_tls_port)

    @property
    def sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def default_node_id() -> str:
    """The machine's host name (one node per machine in v1)."""
    return socket.gethostname()[:64] or "node"


def default_media_workers() -> int:
    """One media worker per core but one (the signalling process keeps a core), at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def refuse_placeholders(s: BaseSettings, prefix: str = "VPBX_") -> None:
    """Raise ``ConfigError`` naming the first secret that is empty, a placeholder or too short."""
    for name, value in s:
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            env_name = f"{prefix}{name.upper()}"
            if raw.strip().lower() in PLACEHOLDERS:
                raise ConfigError(
                    f"{env_name} is empty or a placeholder; set a random value of "
                    f"{MIN_SECRET_LEN}+ characters",
                    details={"setting": env_name},
                )
            if len(raw) < MIN_SECRET_LEN:
                raise ConfigError(
                    f"{env_name} is shorter than {MIN_SECRET_LEN} characters", details={"setting": env_name}
                )


def config_files(data_dir: Path) -> list[Path]:
    """The TOML files read, lowest priority last: ``VPBX_CONFIG_FILE`` then the demo secrets file."""
    files = []
    explicit = os.environ.get("VPBX_CONFIG_FILE")
    if explicit:
        files.append(Path(explicit))
    demo = data_dir / SECRETS_FILE
    if demo.exists():
        files.append(demo)
    return files


def load_settings(files: list[Path] | None = None, **overrides: Any) -> Settings:
    """Build settings from the sources above; ``overrides`` (CLI options) win, ``None`` values are ignored."""
    init = {k: v for k, v in overrides.items() if v is not None}
    if files is None:
        data_dir = Path(init.get("data_dir") or os.environ.get("VPBX_DATA_DIR") or "data")
        files = config_files(data_dir)
    for f in files:
        if not f.exists():
            raise ConfigError(f"settings file {f} does not exist", details={"file": str(f)})
        try:
            tomllib.loads(f.read_text())  # a broken file fails here, with the file in the message
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"settings file {f} is not valid TOML: {e}", details={"file": str(f)}) from e
    cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": files}})
    try:
        s: Settings = cls(**init)
    except ValidationError as e:
        raise ConfigError(
            describe_errors(e), details={"settings": [_env_name(x["loc"]) for x in e.errors()]}
        ) from e
    except SettingsError as e:
        raise ConfigError(str(e)) from e
    return s


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "VPBX_" + "__".join(str(p).upper() for p in loc if isinstance(p, str))


def describe_errors(e: ValidationError) -> str:
    """One line per invalid setting, named by its environment variable."""
    return "; ".join(
        f"{_env_name(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
    )


def ensure_demo_secrets(data_dir: Path) -> Path:
    """Write random secrets for a demo instance on first start; never overwrite existing ones."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'secret_key = "{secrets.token_urlsafe(48)}"\n')
    return path
