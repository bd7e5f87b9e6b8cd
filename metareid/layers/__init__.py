"""Layers of M3L: MetaBN (Eqs. 5-7) and the context managers that set its phase and slot."""

from metareid.layers.metabn import MetaBN, metabn_phase, metabn_stats_slot

__all__ = ["MetaBN", "metabn_phase", "metabn_stats_slot"]
