"""The value-checks switch: label ranges and finiteness are checked unless turned off."""

from __future__ import annotations

import pytest
import torch

import metareid
from metareid import MemoryBank
from metareid._validation import check_finite, check_labels, value_checks_enabled


def test_value_checks_switch_skips_only_the_syncing_checks():
    bad_labels, nan = torch.tensor([0, 7]), torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got out-of-range"):
        check_labels("labels", bad_labels, 2, 3)
    with pytest.raises(
        ValueError, match=r"must be finite, got 1 NaN .* \(first at index \(1,\): nan\)"
    ):
        check_finite("x", nan)
    with metareid.value_checks(False):
        assert not value_checks_enabled()
        check_labels("labels", bad_labels, 2, 3)  # not looked at
        check_finite("x", nan)
        with pytest.raises(ValueError, match="must have shape"):  # shapes still checked
            check_labels("labels", bad_labels, 3, 3)
    assert value_checks_enabled()
    metareid.set_value_checks(False)
    try:
        bank = MemoryBank(2, 2)
        bank.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    finally:
        metareid.set_value_checks(True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        metareid.set_value_checks(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enabled must be a bool"), metareid.value_checks("no"):  # type: ignore[arg-type]
        pass
