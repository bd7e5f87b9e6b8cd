"""Layers of M3L: MetaBN (Eqs. 5-7), the context manager that sets its phase, and the
count of the mixtures a model returns."""

from metareid.layers.metabn import MetaBN, metabn_phase, mixture_count

__all__ = ["MetaBN", "metabn_phase", "mixture_count"]
