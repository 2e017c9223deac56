"""Where a search space's blocks meet: the op pairs across block boundaries, and the check that a predictor's
fusion rules never fuse across one (so a per-block :class:`~hwnas.tables.LatencyTable` stays exact)."""

from __future__ import annotations

from typing import Any, Sequence

from hwnas.errors import FusionBoundaryError

__all__ = ["boundary_op_pairs", "check_boundaries", "graph_ends", "space_slots"]


def space_slots(space: Any, shape: tuple[int, ...]) -> list[Any]:
    """The slots of ``space`` at input ``shape`` (:func:`search_spaces.layout`)."""
    import search_spaces as ss

    try:
        return ss.layout(space, shape)
    except ValueError:   # mutated in place by a one-shot strategy: its structure is still its config's
        return ss.layout(type(space)(space.config), shape)


def graph_ends(graph: Any) -> tuple[set[str], str | None, bool]:
    """(ops of the nodes nobody reads, op of the single reader of the input or None, graph is empty)."""
    read = {i for node in graph.nodes for i in node.inputs}
    tails = {node.op for node in graph.nodes if node.name not in read}
    source = graph.inputs[0] if graph.inputs else "input"
    readers = [node for node in graph.nodes for i in node.inputs if i == source]
    return tails, (readers[0].op if len(readers) == 1 else None), not graph.nodes


def boundary_op_pairs(space: Any, input_shape: Sequence[int] | None = None) -> set[tuple[str, str]]:
    """The op pairs that meet across a block boundary of ``space``: ``(op ending a slot, op starting the next)``.

    A fusion rule holding one of these pairs as consecutive ops would fuse across blocks, and
    :meth:`LatencyTable.build` refuses such a predictor (:class:`FusionBoundaryError`); a predictor builder
    splits its rules at these pairs (:func:`hwnas.builder.derive_fusion_rules`). ``space`` is a space instance
    or a registered name; ``input_shape`` defaults to the space's ``(1, 3, input_size, input_size)``.
    """
    import search_spaces as ss
    from torch import nn

    from hwnas.graph import capture

    if isinstance(space, str):
        space = ss.create_space(space)
    side = space.config.input_size
    shape = (1, 3, side, side) if input_shape is None else tuple(int(d) for d in input_shape)
    slots = space_slots(space, shape)
    ends = [{choice: graph_ends(capture(nn.Sequential(module), "torch", slot.in_shape))
             for choice, module in slot.candidates.items()} for slot in slots]
    return set(_boundary_pairs(slots, ends))


def _boundary_pairs(slots: list[Any], ends: list[dict[str, tuple[set[str], str | None, bool]]]
                    ) -> dict[tuple[str, str], list[tuple[str, str, str, str]]]:
    """Per op pair meeting at a slot boundary, where: ``(slot before, its choice, slot after, its choice)``."""
    # (op, slot name, choice) of the outputs that can reach the current boundary; an empty candidate (none in
    # the built-in spaces) passes its input through, so the outputs before it reach the next boundary too.
    reaching: list[tuple[str, str, str]] = []
    pairs: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
    for slot, slot_ends in zip(slots, ends):
        for choice, (_, head, empty) in slot_ends.items():
            if head is None or empty:
                continue
            for op, where, before in reaching:
                pairs.setdefault((op, head), []).append((where, before, slot.name, choice))
        passthrough = any(empty for _, _, empty in slot_ends.values())
        outs = [(op, slot.name, choice) for choice, (tails, _, _) in slot_ends.items() for op in sorted(tails)]
        reaching = outs + (reaching if passthrough else [])
    return pairs


def check_boundaries(slots: list[Any], ends: list[dict[str, tuple[set[str], str | None, bool]]],
                      predictor: Any) -> None:
    """Raise :class:`FusionBoundaryError` if a rule can chain an op of a slot into the next slot's first op."""
    rule_pairs: dict[tuple[str, str], str] = {}
    for pattern in predictor.rules.patterns:
        for a, b in zip(pattern, pattern[1:]):
            rule_pairs.setdefault((a, b), "-".join(pattern))
    if not rule_pairs:
        return
    problems: dict[tuple[str, str, str, str, str], tuple[set[str], set[str]]] = {}
    for (op, head), places in _boundary_pairs(slots, ends).items():
        if (op, head) not in rule_pairs:
            continue
        for where, before, name, choice in places:
            key = (rule_pairs[op, head], op, where, head, name)
            problems.setdefault(key, (set(), set()))
            problems[key][0].add(before)
            problems[key][1].add(choice)
    if problems:
        lines = [f"rule {rule!r} fuses {op!r} ending {where} ({', '.join(sorted(a))}) with {head!r} starting "
                 f"{name} ({', '.join(sorted(b))})" for (rule, op, where, head, name), (a, b) in problems.items()]
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more boundaries" if len(lines) > 3 else "")
        raise FusionBoundaryError(
            f"predictor {predictor.name!r}: a per-block latency table would not be exact: {shown}. The kernels of "
            "a network would depend on neighbouring blocks (pairwise terms, which this table does not have); "
            "score whole subnets with predictor.predict instead")
