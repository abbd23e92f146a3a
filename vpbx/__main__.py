"""``python -m vpbx`` is the ``vpbx`` command."""

from __future__ import annotations

from vpbx.cli import main

main()
