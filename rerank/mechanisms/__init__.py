"""Attention mechanisms: the Mechanism contract and the registry of named mechanisms."""
from . import registry
from .base import Mechanism, MechanismSpec

__all__ = ["Mechanism", "MechanismSpec", "registry"]
