"""Mixture-of-experts attention family."""
from __future__ import annotations

MECHANISMS: tuple = ()
