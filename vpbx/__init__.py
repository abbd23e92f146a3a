"""vpbx: an open-source multi-tenant cloud PBX."""

from __future__ import annotations

__version__ = "0.1.0"
