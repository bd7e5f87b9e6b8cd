"""Meta-learning: the M3L meta step (Algorithm 1)."""

from metareid.meta.learner import LossFn, MetaLearner, MetaStepResult, missing_second_derivative
from metareid.meta.phase import Phase

__all__ = ["LossFn", "MetaLearner", "MetaStepResult", "Phase", "missing_second_derivative"]
