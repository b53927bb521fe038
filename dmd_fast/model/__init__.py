"""The DMD model built from dmd_fast.nn, its configs and its losses."""

from dmd_fast.model.config import PRESETS, DMDConfig, get_preset
from dmd_fast.model.dmd import DMD

__all__ = ["DMD", "DMDConfig", "PRESETS", "get_preset"]
