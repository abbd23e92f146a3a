"""Prometheus metrics; module-level objects with bounded label values (CONVENTIONS.md §13)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("vpbx_http_requests_total", "Cabinet and API HTTP requests", ["method", "code_class"])
HTTP_LATENCY = Histogram(
    "vpbx_http_request_duration_seconds",
    "HTTP request handling time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOGIN_ATTEMPTS = Counter("vpbx_web_login_attempts_total", "Cabinet login attempts", ["outcome"])
