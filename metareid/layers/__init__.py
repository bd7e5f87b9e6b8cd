"""Layers of M3L: MetaBN (Eqs. 5-7) and the context manager that sets its phase."""

from metareid.layers.metabn import MetaBN, metabn_phase

__all__ = ["MetaBN", "metabn_phase"]
