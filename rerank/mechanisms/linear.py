"""Linear attention family."""
from __future__ import annotations

MECHANISMS: tuple = ()
