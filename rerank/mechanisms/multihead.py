"""Multi-head attention family."""
from __future__ import annotations

MECHANISMS: tuple = ()
