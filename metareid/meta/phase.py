"""The phase in which a loss of Algorithm 1 is computed."""

from __future__ import annotations

from enum import Enum

__all__ = ["Phase"]


class Phase(str, Enum):
    """Which part of Algorithm 1 a ``loss_fn`` call belongs to.

    A ``str`` subclass, so ``phase == "meta_test"`` and :func:`metareid.metabn_phase`
    accept it like the plain strings.

    * ``META_TRAIN`` (``"meta_train"``): lines 4-6, the model at ``Theta`` on a
      meta-train domain; MetaBN records the domain's statistics.
    * ``META_TEST`` (``"meta_test"``): lines 9-12, the model at ``Theta'`` on the
      meta-test domain; a MetaBN neck returns its mixtures (``k * B`` rows for ``k``
      meta-train domains), which are not features of the meta-test domain itself.
    * ``NORMAL`` (``"normal"``): a plain training step without meta-learning (the
      baseline of Table 3).

    Example:
        >>> from metareid import Phase
        >>> Phase.META_TEST == "meta_test", str(Phase.META_TRAIN)
        (True, 'meta_train')
        >>> Phase("normal") is Phase.NORMAL
        True
    """

    META_TRAIN = "meta_train"
    META_TEST = "meta_test"
    NORMAL = "normal"

    def __str__(self) -> str:
        return str(self.value)
