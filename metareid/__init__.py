"""metareid: memory-based multi-source meta-learning (M3L) for generalizable person ReID."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
