"""Structured logging: structlog over the standard library, JSON with a flag, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "***"
PARAMETER_LOGGERS = {"aiosqlite": logging.INFO, "sqlalchemy.engine": logging.WARNING, "asyncpg": logging.INFO}
# Keys whose values never reach a log, whatever the caller passed.
SECRET_KEY_RE = re.compile(r"pass(word)?|secret|token|ha1|api_key|sign|cookie|csrf|authorization", re.I)


def redact_secrets(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and SECRET_KEY_RE.search(key):
            event[key] = REDACTED
    return event


def configure_logging(*, json: bool = False, level: str = "info") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # the level check first: a disabled debug/info line costs one comparison, not the whole chain
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints query strings; ours (the http.request event) does not.
    logging.getLogger("uvicorn.access").disabled = True
    # Drivers that print SQL parameters (session tokens, hashes) at debug level stay quieter than that.
    for name, floor in PARAMETER_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLogger().level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
