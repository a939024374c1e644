"""Combinatorial mode: every expansion of a template, lazily, and how many there are.

Order is that of nested loops written left to right: in ``{a|b} {x|y}`` the first group varies
slowest (``a x, a y, b x, b y``); a group yields its options' expansions in list order; a
choose-k group yields k = k_min first, then its combinations in ``itertools.combinations`` order.
A wildcard behaves like a group of its file's options. Weights are ignored here.

Nothing holds the whole product. Each node becomes a *re-iterable* (an object whose ``__iter__``
starts a fresh generator), and ``_product`` walks them like an odometer, restarting an inner
re-iterable whenever an outer one advances. ``itertools.product`` is not used because it copies
every input into a tuple first. Nodes with at most ``MATERIALIZE_LIMIT`` expansions are cached as
tuples, so memory stays bounded by the template's size, not its number of expansions.

``count`` multiplies and adds sizes instead of expanding; for choose-k it sums the elementary
symmetric polynomials of the option sizes (O(n * k), exact Python ints, however large).

Every result is tidied: runs of spaces become one space and the ends are stripped, so empty
options leave no doubled spaces (``{a|} cat`` gives "a cat" and "cat"). Nothing else is changed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.prompts.nodes import Alternatives, Literal, Node, Sequence, Wildcard, spread
from pipeline.prompts.wildcards import WildcardStore

MATERIALIZE_LIMIT = 256
_SPACES = re.compile(" {2,}")


def count(node: Node, wildcards: WildcardStore | None = None) -> int:
    """How many strings ``expand(node, wildcards)`` yields, computed without expanding."""
    return _Expander(wildcards).count(node)


def max_chars(node: Node, wildcards: WildcardStore | None = None) -> int:
    """The length of the longest string ``node`` can expand to (before tidying), computed without
    expanding; bounds what wildcards using wildcards can build."""
    return _Expander(wildcards).longest(node)


def expand(node: Node, wildcards: WildcardStore | None = None) -> Iterator[str]:
    """Yield every expansion of ``node`` in a deterministic order, in constant memory."""
    for text in _Expander(wildcards).values(node):
        yield tidy(text)


def tidy(text: str) -> str:
    """Collapse runs of spaces to one and strip the ends."""
    return _SPACES.sub(" ", text).strip()


class _Reiterable:
    """Iterating it calls ``fn(*args)`` afresh: a generator that can be run again."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Iterator[str]], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __iter__(self) -> Iterator[str]:
        return self.fn(*self.args)


class _Expander:
    """One count/expand call: memoises sizes and re-iterables for the nodes it meets."""

    def __init__(self, wildcards: WildcardStore | None) -> None:
        self.store = wildcards if wildcards is not None else WildcardStore(None)
        self.sizes: dict[int | str, int] = {}  # id(node) or wildcard name -> count
        self.lengths: dict[int | str, int] = {}  # id(node) or wildcard name -> longest text
        self.wildcards: dict[str, Iterable[str]] = {}

    def count(self, node: Node) -> int:
        key: int | str = node.name if isinstance(node, Wildcard) else id(node)
        if key in self.sizes:
            return self.sizes[key]
        if isinstance(node, Literal):
            size = 1
        elif isinstance(node, Sequence):
            size = math.prod(self.count(p) for p in node.parts)
        elif isinstance(node, Alternatives):
            options, k_min, k_max = spread(node, self.store)
            size = choose_count([self.count(o.node) for o in options], k_min, k_max)
        else:
            size = sum(self.count(o) for o in self.store.options(node.name))
        self.sizes[key] = size
        return size

    def longest(self, node: Node) -> int:
        key: int | str = node.name if isinstance(node, Wildcard) else id(node)
        if key in self.lengths:
            return self.lengths[key]
        if isinstance(node, Literal):
            size = len(node.text)
        elif isinstance(node, Sequence):
            size = sum(self.longest(p) for p in node.parts)
        elif isinstance(node, Alternatives):
            options, _, k_max = spread(node, self.store)
            picked = sorted((self.longest(o.node) for o in options), reverse=True)[:k_max]
            size = sum(picked) + len(node.joiner) * max(len(picked) - 1, 0)
        else:
            size = max(self.longest(o) for o in self.store.options(node.name))
        self.lengths[key] = size
        return size

    def values(self, node: Node) -> Iterable[str]:
        """A re-iterable over the expansions of ``node``; a tuple when it is small."""
        if isinstance(node, Literal):
            return (node.text,)
        if isinstance(node, Wildcard):
            if node.name not in self.wildcards:
                options = [self.values(o) for o in self.store.options(node.name)]
                self.wildcards[node.name] = self._small(_Reiterable(_chain, options), node)
            return self.wildcards[node.name]
        if isinstance(node, Sequence):
            lazy = _Reiterable(_concat, [self.values(p) for p in node.parts])
        else:
            spread_options, k_min, k_max = spread(node, self.store)
            options = [self.values(o.node) for o in spread_options]
            lazy = _Reiterable(_choose, options, k_min, k_max, node.joiner)
        return self._small(lazy, node)

    def _small(self, lazy: _Reiterable, node: Node) -> Iterable[str]:
        return tuple(lazy) if self.count(node) <= MATERIALIZE_LIMIT else lazy


def choose_count(sizes: list[int], k_min: int, k_max: int) -> int:
    """Sum over k in k_min..k_max of e_k(sizes): expansions of all k-combinations of options."""
    e = [1] + [0] * k_max
    for i, size in enumerate(sizes):
        for j in range(min(i + 1, k_max), 0, -1):
            e[j] += e[j - 1] * size
    return sum(e[k_min:k_max + 1])


def _chain(parts: list[Iterable[str]]) -> Iterator[str]:
    for part in parts:
        yield from part


def _concat(parts: list[Iterable[str]]) -> Iterator[str]:
    for texts in _product(parts):
        yield "".join(texts)


def _choose(options: list[Iterable[str]], k_min: int, k_max: int, joiner: str) -> Iterator[str]:
    if k_min == k_max == 1:
        yield from _chain(options)
        return
    for k in range(k_min, k_max + 1):
        for combo in itertools.combinations(options, k):
            for texts in _product(combo):
                yield joiner.join(texts)


def _product(parts: list[Iterable[str]] | tuple[Iterable[str], ...]) -> Iterator[list[str]]:
    """Odometer over re-iterables, first part slowest. Yields one shared list: use it at once."""
    n = len(parts)
    if n == 0:
        yield []
        return
    iterators: list[Iterator[str]] = [iter(parts[0])] + [iter(())] * (n - 1)
    current: list[str] = [""] * n
    level = 0
    while level >= 0:
        try:
            current[level] = next(iterators[level])
        except StopIteration:
            level -= 1
            continue
        if level == n - 1:
            yield current
        else:
            level += 1
            iterators[level] = iter(parts[level])
