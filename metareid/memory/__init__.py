"""Identity memory of M3L (Eq. 2)."""

from metareid.memory.bank import MemoryBank

__all__ = ["MemoryBank"]
