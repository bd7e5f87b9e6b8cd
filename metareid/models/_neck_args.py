"""Checks of :class:`~metareid.models.ReIDModel`'s neck arguments (private module).

Shared by the model and :func:`~metareid.models.build_model`, which checks them before it
builds a trunk.
"""

from __future__ import annotations

from collections.abc import Sequence

from metareid._validation import check_choice, check_positive_int
from metareid.functional.metabn import SAMPLE_SCALES

__all__ = ["check_neck_args", "check_num_classes"]


def check_neck_args(
    num_classes: object,
    normalize_neck: object,
    freeze_neck_bias: object,
    sample_scale: object,
    share_lambda: object,
) -> int | list[int] | None:
    """Validate the neck arguments of :class:`ReIDModel`; returns ``num_classes`` checked."""
    for name, flag in (
        ("normalize_neck", normalize_neck),
        ("freeze_neck_bias", freeze_neck_bias),
        ("share_lambda", share_lambda),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    check_choice("sample_scale", sample_scale, SAMPLE_SCALES)
    return check_num_classes(num_classes)


def check_num_classes(value: object) -> int | list[int] | None:
    """``None``, an int >= 1 or a non-empty list of them, else an error naming the value."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return check_positive_int("num_classes", value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError("num_classes must be an int, a non-empty sequence of ints or None")
        for i, n in enumerate(value):
            check_positive_int(f"num_classes[{i}]", n)
        return list(value)
    raise TypeError(
        f"num_classes must be None, an int >= 1 or a sequence of ints >= 1, got {value!r}"
    )
