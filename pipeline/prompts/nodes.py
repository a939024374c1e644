"""The parsed form of a prompt template: small frozen dataclasses, built by ``parser.parse``.

    Node = Literal | Sequence | Alternatives | Wildcard

Nodes are immutable and hashable, so parsed templates can be cached and shared freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Literal:
    """Text copied to the output as is (escapes already resolved)."""

    text: str


@dataclass(frozen=True, slots=True)
class Sequence:
    """Parts written one after the other; expands to the product of the parts' expansions."""

    parts: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Option:
    """One choice inside ``{...}``. ``weight`` only matters when sampling randomly."""

    node: Node
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Alternatives:
    """``{a|b|c}``: pick ``k`` distinct options, for every ``k`` in ``k_min..k_max``.

    Picked options keep their order in the list and are joined with ``joiner``. A plain
    ``{a|b}`` is ``k_min == k_max == 1``.
    """

    options: tuple[Option, ...]
    k_min: int = 1
    k_max: int = 1
    joiner: str = ", "


@dataclass(frozen=True, slots=True)
class Wildcard:
    """``__name__``: one option of a wildcard file; ``position`` is its 0-based offset."""

    name: str
    position: int = 0


Node = Literal | Sequence | Alternatives | Wildcard

EMPTY = Literal("")


def wildcard_names(node: Node) -> set[str]:
    """Names of the wildcards ``node`` uses directly (not those used inside wildcard files)."""
    found: set[str] = set()
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Wildcard):
            found.add(current.name)
        elif isinstance(current, Sequence):
            stack.extend(current.parts)
        elif isinstance(current, Alternatives):
            stack.extend(o.node for o in current.options)
    return found


def nesting(node: Node, wildcard_depth: Callable[[str], int]) -> int:
    """Levels of groups and wildcard hops on the deepest path through ``node``; a wildcard
    counts 1 plus ``wildcard_depth(name)`` (the nesting of its options). Iterative."""
    best = 0
    stack: list[tuple[Node, int]] = [(node, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, Wildcard):
            best = max(best, depth + 1 + wildcard_depth(current.name))
        elif isinstance(current, Sequence):
            stack.extend((part, depth) for part in current.parts)
        elif isinstance(current, Alternatives):
            best = max(best, depth + 1)
            stack.extend((o.node, depth + 1) for o in current.options)
        else:
            best = max(best, depth)
    return best


def spread(node: Alternatives, store: Any) -> tuple[tuple[Option, ...], int, int]:
    """The options, k_min and k_max of a group, with ``{k$$__name__}`` spread over the
    wildcard's options (``store.options(name)``); k_max -1 means all of them."""
    only = node.options[0].node if len(node.options) == 1 else None
    if not isinstance(only, Wildcard) or (node.k_min == node.k_max == 1):
        return node.options, node.k_min, node.k_max
    options = tuple(Option(o, 1.0) for o in store.options(only.name))
    k_max = len(options) if node.k_max == -1 else node.k_max
    if max(node.k_min, k_max) > len(options):
        from pipeline.errors import JobError

        raise JobError(f"choose {node.k_min}-{k_max} of __{only.name}__, which has only "
                       f"{len(options)} option(s)", where=f"__{only.name}__",
                       hint="lower k or add lines to the wildcard file")
    return options, node.k_min, k_max
