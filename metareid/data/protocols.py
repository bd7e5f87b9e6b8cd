"""The evaluation protocols of domain-generalizable ReID as dataset specs.

============  ==============================================  ===============================
protocol      sources (all used for training)                 targets
============  ==============================================  ===============================
``m3l``       three of M, D, C3, MS (train splits), leave      the fourth (C3 evaluated on
              one out (M3L's own protocol)                    CUHK03-NP detected)
``p1``        M + C2 + C3 + CS: train + test of M, C2, C3     PRID, GRID, VIPeR, iLIDS, each
              (``use=all``), CS train                         the mean over its 10 splits
``p2``        three of M, MS, CS, C3 (train splits), leave    the fourth, CS excepted:
              one out                                         C3, MS or M
``p3``        as ``p2``, but M, MS and C3 with train +        as ``p2``
              query + gallery (``use=all``); CS train only
============  ==============================================  ===============================

M = Market-1501, D = DukeMTMC-reID, C2 = CUHK02, C3 = CUHK03 (CUHK03-NP, except the M3L
sources, which use the old protocol as the published code does), MS = MSMT17, CS =
CUHK-SYSU. Protocols 1-3 are those BAU's README names; META, ACL, MetaBIN, Style-Interleaved
Learning and BAU report them. Variants are options: C3 ``detected`` (default, as M3L) or
``labeled`` (fast-reid, ACL, META), MSMT17 ``V2`` (default) or ``V1``, and for Protocol 1
whether DukeMTMC-reID is added (``with_duke``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from metareid._validation import check_choice

__all__ = ["PROTOCOLS", "PROTOCOL_TARGETS", "ProtocolPlan", "protocol_plan", "protocol_plans"]

PROTOCOLS = ("m3l", "p1", "p2", "p3")
"""The protocol names."""

PROTOCOL_TARGETS: dict[str, tuple[str, ...]] = {
    "m3l": ("market1501", "dukemtmc", "cuhk03", "msmt17"),
    "p1": ("prid", "grid", "viper", "ilids"),
    "p2": ("cuhk03", "msmt17", "market1501"),
    "p3": ("cuhk03", "msmt17", "market1501"),
}
"""The targets of each protocol, in the order papers report them."""

_ALIASES = {
    "cuhk03np": "cuhk03",
    "c3": "cuhk03",
    "m": "market1501",
    "ms": "msmt17",
    "d": "dukemtmc",
}

_DESCRIPTIONS = {
    "m3l": "M3L leave-one-out over M, D, C3, MS (train splits)",
    "p1": "Protocol-1: M + C2 + C3 (train + test) + CS (train) -> PRID, GRID, VIPeR, iLIDS",
    "p2": "Protocol-2: leave-one-out over M, MS, CS, C3 (train splits)",
    "p3": "Protocol-3: leave-one-out over M, MS, CS, C3 (M, MS, C3 train + test; CS train)",
}


@dataclass(frozen=True)
class ProtocolPlan:
    """What one task of a protocol trains and evaluates on.

    Attributes:
        protocol: the protocol name.
        label: a short name of the task, e.g. ``"market1501"`` or ``"p1"``.
        sources: the source dataset specs, in domain order.
        target: the target spec evaluated during training (for Protocol 1, split 0 of the
            first small target).
        final_targets: target specs evaluated after training on every split (Protocol 1's
            four small datasets); empty when ``target`` is the whole evaluation.
        description: one line on the protocol.

    Example:
        >>> plan = protocol_plan("p2", "msmt17")
        >>> plan.sources, plan.target
        (('market1501', 'cuhksysu', 'cuhk03np:detected'), 'msmt17:V2')
    """

    protocol: str
    label: str
    sources: tuple[str, ...]
    target: str
    final_targets: tuple[str, ...]
    description: str

    def describe(self) -> str:
        """One line naming the protocol, the sources and the targets.

        Example:
            >>> print(protocol_plan("m3l", "market1501").describe())
            m3l (M3L leave-one-out over M, D, C3, MS (train splits)): msmt17:V2 + dukemtmc + cuhk03 -> market1501
        """
        targets = ", ".join(self.final_targets) if self.final_targets else self.target
        extra = " (each over all its splits)" if self.final_targets else ""
        return (
            f"{self.protocol} ({self.description}): {' + '.join(self.sources)} -> {targets}{extra}"
        )


def protocol_plan(
    protocol: str,
    target: str | None = None,
    *,
    msmt_version: Literal["V1", "V2"] = "V2",
    cuhk03_subset: Literal["detected", "labeled"] = "detected",
    cuhk_source: Literal["cuhk03", "cuhk03np"] = "cuhk03",
    with_duke: bool = False,
) -> ProtocolPlan:
    """The sources and targets of one task of a protocol.

    Args:
        protocol: ``"m3l"``, ``"p1"``, ``"p2"`` or ``"p3"``.
        target: the held-out dataset of a leave-one-out protocol (``m3l``: market1501,
            dukemtmc, cuhk03, msmt17; ``p2``/``p3``: cuhk03, msmt17, market1501;
            ``cuhk03np`` is accepted for ``cuhk03``). For ``p1``: one of prid, grid, viper,
            ilids, or None / ``"all"`` (default) for all four.
        msmt_version: MSMT17 version, as a source or a target. Default ``"V2"``.
        cuhk03_subset: CUHK03-NP subset, as a source (``p1``-``p3``) or a target. Default
            ``"detected"``.
        cuhk_source: ``m3l`` only: CUHK03 as a source under the old protocol (``"cuhk03"``,
            default, as the published code) or CUHK03-NP (``"cuhk03np"``).
        with_duke: ``p1`` only: add DukeMTMC-reID (train + test) to the sources, as some
            codebases do. Default False.

    Returns:
        The plan.

    Raises:
        ValueError: an unknown protocol, a target the protocol does not have (the message
            lists them), or a leave-one-out protocol without a target.

    Example:
        >>> plan = protocol_plan("p1")
        >>> plan.sources
        ('market1501:use=all', 'cuhk02:use=all', 'cuhk03np:detected,use=all', 'cuhksysu')
        >>> plan.target, plan.final_targets
        ('prid', ('prid', 'grid', 'viper', 'ilids'))
    """
    check_choice("protocol", protocol, PROTOCOLS)
    check_choice("msmt_version", msmt_version, ("V1", "V2"))
    check_choice("cuhk03_subset", cuhk03_subset, ("detected", "labeled"))
    check_choice("cuhk_source", cuhk_source, ("cuhk03", "cuhk03np"))
    choices = PROTOCOL_TARGETS[protocol]
    msmt = f"msmt17:{msmt_version}"
    c3 = f"cuhk03np:{cuhk03_subset}"
    if protocol == "p1":
        if target in (None, "all"):
            small = choices
        elif target in choices:
            small = (target,)
        else:
            raise ValueError(
                f"target for protocol 'p1' must be one of {[*choices, 'all']}, got {target!r}"
            )
        sources: tuple[str, ...] = (
            "market1501:use=all",
            "cuhk02:use=all",
            f"{c3},use=all",
            "cuhksysu",
        )
        if with_duke:
            sources += ("dukemtmc:use=all",)
        label = "p1" if len(small) > 1 else small[0]
        return ProtocolPlan(protocol, label, sources, small[0], small, _DESCRIPTIONS[protocol])
    held_out = _ALIASES.get(target or "", target)
    if held_out not in choices:
        raise ValueError(
            f"target for protocol {protocol!r} must be one of {list(choices)}, got {target!r}"
        )
    assert held_out is not None
    if protocol == "m3l":
        spec = {
            "market1501": "market1501",
            "dukemtmc": "dukemtmc",
            "cuhk03": "cuhk03" if cuhk_source == "cuhk03" else c3,
            "msmt17": msmt,
        }
        order = ("msmt17", "dukemtmc", "cuhk03", "market1501")  # the paper's MS+D+C -> M
        target_spec = {"cuhk03": c3, "msmt17": msmt}.get(held_out, held_out)
    else:
        use = ",use=all" if protocol == "p3" else ""
        spec = {
            "market1501": f"market1501{':use=all' if use else ''}",
            "msmt17": msmt + use,
            "cuhksysu": "cuhksysu",
            "cuhk03": c3 + use,
        }
        order = ("market1501", "msmt17", "cuhksysu", "cuhk03")  # M + MS + CS + C3
        target_spec = {"cuhk03": c3, "msmt17": msmt}.get(held_out, held_out)
    kept = tuple(spec[name] for name in order if name != held_out)
    return ProtocolPlan(protocol, held_out, kept, target_spec, (), _DESCRIPTIONS[protocol])


def protocol_plans(protocol: str, target: str | None = None, **options: Any) -> list[ProtocolPlan]:
    """Every task of a protocol (one plan), or the one for ``target``.

    Protocol 1 is one task (all four small targets share the model); the leave-one-out
    protocols have one task per target.

    Example:
        >>> [p.label for p in protocol_plans("p2")]
        ['cuhk03', 'msmt17', 'market1501']
    """
    if protocol == "p1" or target is not None:
        return [protocol_plan(protocol, target, **options)]
    check_choice("protocol", protocol, PROTOCOLS)
    return [protocol_plan(protocol, t, **options) for t in PROTOCOL_TARGETS[protocol]]
