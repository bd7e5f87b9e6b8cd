"""The result of one evaluation of a model on a target: mAP and CMC at an epoch."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvalResult"]


@dataclass(frozen=True)
class EvalResult:
    """Retrieval accuracy on the target domain, in percent.

    Attributes:
        epoch: The number of completed epochs when evaluated.
        mAP: Mean average precision.
        rank1: CMC at rank 1; likewise ``rank5`` and ``rank10``.
        mINP: Mean inverse negative penalty.
    """

    epoch: int
    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float

    def as_dict(self) -> dict[str, float]:
        """The numbers as a dict."""
        return {
            "epoch": self.epoch,
            "mAP": self.mAP,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "rank10": self.rank10,
            "mINP": self.mINP,
        }
