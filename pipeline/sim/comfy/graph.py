"""Graph mechanics of ComfyUI's executor (pure): cache signatures and the execution order.

**Signatures.** ComfyUI's default ("classic") cache keys a node's result by its input
signature: class, widget values, and the signatures of what its links point at. Before a
prompt runs, entries whose signature no node of the new prompt has are dropped, so only the
previous prompt's results survive: the same graph again is a full hit, alternating two graphs
re-executes every time. Hidden inputs (the PNG metadata) are not part of a signature.

**Order.** :class:`ExecutionList` is ComfyUI's: each output to run is added with the
uncached nodes it needs; of the nodes whose inputs are ready, an output node goes first, then
one that feeds an output directly, then one two steps from an output, else the first added.
For the usual txt2img graph that is checkpoint, latent, negative, positive, KSampler, VAE
decode, save: what the real server does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from pipeline.sim.comfy.nodes import NodeClass


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int))


def signatures(prompt: dict[str, Any]) -> dict[str, str]:
    """Every node's cache signature (hex). Dangling links and cycles are tolerated."""
    out: dict[str, str] = {}
    busy: set[str] = set()

    def sign(node_id: str) -> str:
        if node_id in out:
            return out[node_id]
        if node_id in busy or node_id not in prompt:
            return f"<{'cycle' if node_id in busy else 'missing'}:{node_id}>"
        busy.add(node_id)
        node = prompt[node_id]
        parts: list[Any] = [node.get("class_type")]
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        for name in sorted(inputs):
            value = inputs[name]
            parts.append([name, ["link", sign(value[0]), value[1]] if is_link(value) else value])
        busy.discard(node_id)
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode())
        out[node_id] = digest.hexdigest()
        return out[node_id]

    for node_id in prompt:
        sign(node_id)
    return out


class ExecutionList:
    """Which node runs next. ``cached(node_id)`` says whether a node's result is cached now."""

    def __init__(self, prompt: dict[str, Any], classes: dict[str, NodeClass],
                 cached: Callable[[str], bool]) -> None:
        self._prompt = prompt
        self._classes = classes
        self._cached = cached
        self._pending: dict[str, None] = {}  # ordered set
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, None]] = {}
        self._staged: str | None = None

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = None
            self._block_count[current] = 0
            self._blocking[current] = {}
            for value in self._prompt[current]["inputs"].values():
                if is_link(value):
                    if not self._cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            if not self._cached(source) and target not in self._blocking[source]:
                self._blocking[source][target] = None
                self._block_count[target] += 1

    def is_empty(self) -> bool:
        return not self._pending

    def stage(self) -> str:
        ready = [n for n in self._pending if self._block_count[n] == 0]
        if not ready:
            raise RuntimeError("the graph has a cycle: no node is ready to run")
        self._staged = self._pick(ready)
        return self._staged

    def complete(self) -> None:
        node_id = self._staged
        assert node_id is not None
        self._staged = None
        del self._pending[node_id]
        for blocked in self._blocking.pop(node_id, {}):
            self._block_count[blocked] -= 1

    def _is_output(self, node_id: str) -> bool:
        return self._classes[self._prompt[node_id]["class_type"]].output_node

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self._blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self._blocking[node_id]:
                if any(self._is_output(b) for b in self._blocking.get(blocked, {})):
                    return node_id
        return ready[0]


def dependency_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The prompt's node ids walked depth-first from its outputs, then the rest (the order
    ComfyUI's ``current_outputs`` happens to list them in an ``execution_error``)."""
    seen: dict[str, None] = {}
    for output in outputs:
        stack = [output]
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in prompt:
                continue
            seen[node_id] = None
            stack.extend(v[0] for v in prompt[node_id].get("inputs", {}).values() if is_link(v))
    for node_id in prompt:
        seen.setdefault(node_id, None)
    return list(seen)
