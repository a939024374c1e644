"""Random mode: one draw from a template, reproducible from the ``random.Random`` passed in.

- ``{a|b}`` picks one option with probability proportional to its weight (default 1).
- ``{1-3$$a|b|c}`` picks k uniformly from 1..3, then k distinct options by weight (without
  replacement); they are written in list order, as in combinatorial mode.
- ``__name__`` picks one option of the wildcard uniformly.

The draw order is fixed (depth first, left to right) and only ``rng.random``, ``randint`` and
``randrange`` are used, so the same seed gives the same prompt. The result is tidied like
``expand``'s.
"""

from __future__ import annotations

import random

from pipeline.prompts.combinatorial import tidy
from pipeline.prompts.nodes import Alternatives, Literal, Node, Sequence, spread
from pipeline.prompts.wildcards import WildcardStore


def sample(node: Node, rng: random.Random, wildcards: WildcardStore | None = None) -> str:
    """One random expansion of ``node`` honouring weights."""
    store = wildcards if wildcards is not None else WildcardStore(None)
    return tidy(_draw(node, rng, store))


def _draw(node: Node, rng: random.Random, store: WildcardStore) -> str:
    if isinstance(node, Literal):
        return node.text
    if isinstance(node, Sequence):
        return "".join(_draw(part, rng, store) for part in node.parts)
    if isinstance(node, Alternatives):
        options, k_min, k_max = spread(node, store)
        k = k_min if k_min == k_max else rng.randint(k_min, k_max)
        picked = sorted(pick_weighted([o.weight for o in options], k, rng))
        return node.joiner.join(_draw(options[i].node, rng, store) for i in picked)
    options = store.options(node.name)
    return _draw(options[rng.randrange(len(options))], rng, store)


def pick_weighted(weights: list[float], k: int, rng: random.Random) -> list[int]:
    """``k`` distinct indices, each draw proportional to weight among those left.

    The parser guarantees at least ``k`` weights above zero; zero-weight options are never drawn.
    """
    remaining = list(range(len(weights)))
    chosen: list[int] = []
    for _ in range(k):
        total = sum(weights[i] for i in remaining)
        target = rng.random() * total
        acc = 0.0
        at = max(p for p, i in enumerate(remaining) if weights[i] > 0)  # rounding fallback
        for p, i in enumerate(remaining):
            acc += weights[i]
            if target < acc:
                at = p
                break
        chosen.append(remaining.pop(at))
    return chosen
