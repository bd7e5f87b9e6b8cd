"""Identity memory of M3L (Sec. 3.3 of the paper): one centroid per identity, Eq. 2 update."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metareid._validation import (
    check_choice,
    check_features,
    check_positive_int,
    check_unit_interval,
)
from metareid.functional.memory import (
    UPDATE_RULES,
    memory_init,
    memory_logits,
    memory_update_,
)

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """Non-parametric identity memory of one source domain, updated by momentum (Eq. 2).

    Holds the centroids in the buffer :attr:`features`, shape (num_classes, dim), so that
    ``state_dict()``, ``.to()`` and DDP buffer broadcasting cover it. It is not trained by
    an optimiser: :meth:`init_from` fills it, :meth:`update` moves it without recording a
    graph, and :meth:`forward` returns the logits ``features @ memory.T``, through which the
    gradient reaches the features only.

    The bank never normalises its inputs. M3L passes L2-normalised BNNeck features (also in
    train mode); the centroids themselves are kept unit-norm by :meth:`init_from` and
    :meth:`update`.

    Args:
        num_classes: C, the number of identities of the domain.
        dim: D, the feature dimension.
        momentum: m in [0, 1], the weight the old centroid keeps in :meth:`update`.
            Default 0.2 (paper and published code).
        update_rule: ``"mean"`` (default, the paper's Eq. 2: one step per identity with the mean
            of its batch features) or ``"sequential"`` (the published code: one step per
            sample in batch order). Both renormalise the updated centroids, as the published
            code does; Eq. 2 as printed does not. A property: assigning
            another value later is validated.
        device: device of the buffer.
        dtype: dtype of the buffer (floating point).

    Attributes:
        features: the centroids, shape (C, D), zeros until :meth:`init_from` is called.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from metareid.memory import MemoryBank
        >>> bank = MemoryBank(num_classes=3, dim=8)
        >>> bank.init_from(F.normalize(torch.randn(30, 8), dim=1), torch.arange(30) % 3)
        >>> feats = F.normalize(torch.randn(6, 8, requires_grad=True), dim=1)
        >>> logits = bank(feats)  # (6, 3) cosine similarities
        >>> bank.update(feats, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> logits.shape, torch.allclose(bank.features.norm(dim=1), torch.ones(3))
        (torch.Size([6, 3]), True)
    """

    features: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float = 0.2,
        update_rule: str = "mean",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dim = check_positive_int("dim", dim)
        self.momentum = momentum
        self.update_rule = update_rule
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        self.register_buffer("features", torch.zeros(num_classes, dim, device=device, dtype=dtype))

    @property
    def momentum(self) -> float:
        """m in [0, 1]; setting an invalid value raises and keeps the old one."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._momentum = check_unit_interval("momentum", value)

    @property
    def update_rule(self) -> str:
        """``"mean"`` or ``"sequential"``; setting an invalid value raises and keeps the old one."""
        return self._update_rule

    @update_rule.setter
    def update_rule(self, value: str) -> None:
        self._update_rule = check_choice("update_rule", value, UPDATE_RULES)

    @torch.no_grad()
    def init_from(self, features: Tensor, labels: Tensor) -> None:
        """Set every centroid to the L2-normalised mean of its identity's features.

        See :func:`metareid.functional.memory_init`. The published code extracts these
        features with the ImageNet-initialised model in eval mode.

        Args:
            features: features of the whole domain, shape (N, dim), finite.
            labels: identities, integers in [0, num_classes), shape (N,). Every identity needs at
                least one sample.

        Raises:
            ValueError: if an identity has no sample (the missing ids are listed), for labels
                out of range, a bad shape or non-finite features. The bank is unchanged.
            TypeError: for non-integer labels. The bank is unchanged.

        Example:
            >>> import torch
            >>> from metareid.memory import MemoryBank
            >>> bank = MemoryBank(num_classes=2, dim=2)
            >>> bank.init_from(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]))
            >>> bank.features
            tensor([[1., 0.],
                    [0., 1.]])
        """
        check_features("features", features, dim=self.dim)
        centroids = memory_init(features, labels, self.num_classes)
        self.features.copy_(centroids)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Move the centroids of the batch's identities towards its features (Eq. 2).

        Uses :attr:`momentum` and :attr:`update_rule`; see
        :func:`metareid.functional.memory_update`. Runs without gradient even if
        ``features`` requires grad. Logits returned by an earlier :meth:`forward` stay
        valid for ``backward``, so the update may come before or after it.

        Args:
            features: batch features, shape (B, dim), finite (moved to the bank's dtype and
                device).
            labels: identities, integers in [0, num_classes), shape (B,).

        Raises:
            ValueError: for an empty batch, a bad shape, labels out of range (listed) or
                non-finite features. The bank is unchanged.
            TypeError: for non-integer labels. The bank is unchanged.

        Example:
            >>> import torch
            >>> from metareid.memory import MemoryBank
            >>> bank = MemoryBank(num_classes=2, dim=2, momentum=0.0)
            >>> bank.update(torch.tensor([[0.0, 2.0]]), torch.tensor([1]))
            >>> bank.features
            tensor([[0., 0.],
                    [0., 1.]])
        """
        memory_update_(self.features, features, labels, self.momentum, self.update_rule)

    def snapshot(self, dtype: torch.dtype | None = None) -> Tensor:
        """A detached copy of the centroids, shape (C, D), safe to keep in a graph.

        A copy, so that an in-place :meth:`update` before ``backward`` does not invalidate
        the graphs that used it.

        Args:
            dtype: dtype of the copy; ``None`` (default) keeps the bank's.

        Example:
            >>> from metareid.memory import MemoryBank
            >>> MemoryBank(num_classes=4, dim=3).snapshot().shape
            torch.Size([4, 3])
        """
        return self.features.detach().to(dtype=dtype, copy=True)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``features @ memory.T`` of shape (B, num_classes) (the similarities of Eq. 3).

        The gradient flows to ``features`` only. The memory is cast to the dtype of
        ``features``.

        Args:
            features: shape (B, dim); M3L passes L2-normalised features.

        Returns:
            Logits, shape (B, num_classes).

        Example:
            >>> import torch
            >>> from metareid.memory import MemoryBank
            >>> bank = MemoryBank(num_classes=5, dim=3)
            >>> bank(torch.randn(2, 3)).shape
            torch.Size([2, 5])
        """
        check_features("features", features, dim=self.dim)
        return memory_logits(features, self.snapshot(features.dtype))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, "
            f"update_rule={self.update_rule!r}"
        )
