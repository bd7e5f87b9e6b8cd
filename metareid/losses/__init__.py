"""Losses of M3L: memory-based identification (Eq. 3) and batch-hard triplet (Eq. 4)."""

from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss

__all__ = ["HardTripletLoss", "MemoryIDLoss"]
