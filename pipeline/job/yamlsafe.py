"""Reading untrusted YAML (and JSON, which it reads too) into plain data, within limits.

One scan of the parser's events (iterative, so no recursion) refuses before anything is built:
- tags other than the plain ones (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
  ``!!map``, ``!!seq``): ``!!binary``, ``!!set``, ``!!timestamp``, ``!!python/...``, ``!custom``;
- nesting deeper than ``MAX_DEPTH`` levels;
- more than ``MAX_NODES`` values once aliases are expanded (an "alias bomb"), and an alias
  inside its own anchor (a loop).

Then the document is composed and constructed with PyYAML's safe constructor, except that dates
stay text (``2024-01-01`` is a string, as in JSON), ``\\ud83d\\udc19``-style surrogate pairs in
escapes become the character they stand for, a lone surrogate is an error, and an integer too
long to read is an error. Errors are ``YamlLimitError`` / ``yaml.YAMLError`` with a mark (line).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 64
MAX_NODES = 2_000_000
PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in
                       ("str", "int", "float", "bool", "null", "map", "seq", "merge"))


class YamlLimitError(yaml.MarkedYAMLError):
    """The document is outside what sdbatch reads (a tag, a limit); ``problem_mark`` is set."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def base_loader() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(base_loader()):  # type: ignore[misc]
    """The safe loader with JSON-like scalars: no timestamps, surrogate pairs joined."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _construct_str(loader: Any, node: yaml.ScalarNode) -> str:
    return fix_surrogates(loader.construct_scalar(node), node.start_mark)


def _checked(construct: Any, what: str) -> Any:
    """A scalar constructor whose failures (``!!float abc``, ``!!bool maybe``, an int of 5000
    digits) are marked YAML errors, not ValueError/KeyError tracebacks."""

    def run(loader: Any, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise YamlLimitError(f"cannot read {node.value[:40]!r} as {what} ({exc})",
                                 node.start_mark) from None
    return run


def _refuse(loader: Any, node: yaml.Node) -> Any:
    raise YamlLimitError(f"the YAML tag {_short_tag(node.tag)} is not allowed in a job file",
                         node.start_mark)


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:int", _checked(yaml.SafeLoader.construct_yaml_int,
                                                          "a whole number"))
_Loader.add_constructor("tag:yaml.org,2002:float",
                        _checked(yaml.SafeLoader.construct_yaml_float, "a number"))
_Loader.add_constructor("tag:yaml.org,2002:bool",
                        _checked(yaml.SafeLoader.construct_yaml_bool, "true or false"))
for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)
_Loader.add_constructor(None, _refuse)


def fix_surrogates(text: str, mark: Any = None) -> str:
    """Join UTF-16 surrogate pairs (``\\ud83d\\udc19`` -> one character); refuse a lone one."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise YamlLimitError("a \\u escape is half of a surrogate pair (a lone surrogate); write "
                             "the character itself, or both halves", mark) from None


def scan(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Check tags, depth and alias-expanded size from the event stream, before composing."""
    depth = 0
    total = 0
    sizes: dict[str, int] = {}  # anchor -> nodes in its value, aliases expanded
    open_counts: list[int] = []  # nodes so far in each open collection
    open_anchors: list[str | None] = []
    for event in yaml.parse(text, Loader=base_loader()):
        if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent,
                              yaml.MappingStartEvent)):
            tag = event.tag
            if tag not in (None, "!", "?") and _full_tag(tag) not in PLAIN_TAGS:
                raise YamlLimitError(f"the YAML tag {_short_tag(tag)} is not allowed in a job "
                                     "file (only plain values, lists and mappings)",
                                     event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise YamlLimitError(f"alias *{event.anchor} is inside its own anchor (a loop)",
                                     event.start_mark)
            n = sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            n = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > max_depth:
                raise YamlLimitError(f"values are nested deeper than {max_depth} levels",
                                     event.start_mark)
            open_counts.append(1)
            open_anchors.append(event.anchor)
            continue
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
            n = open_counts.pop()
            anchor = open_anchors.pop()
            if anchor:
                sizes[anchor] = n
        else:
            continue
        if open_counts:
            open_counts[-1] += n
        else:
            total += n
        if total + sum(open_counts) > max_nodes:
            raise YamlLimitError(f"the document holds more than {max_nodes:,} values once its "
                                 "aliases (*name) are expanded", event.start_mark)


def _full_tag(tag: str) -> str:
    return "tag:yaml.org,2002:" + tag[2:] if tag.startswith("!!") else tag


def load(text: str) -> tuple[yaml.Node | None, Any]:
    """(the composed node tree, for line numbers; the data). Raises ``yaml.YAMLError``."""
    scan(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        try:
            data = loader.construct_document(node) if node is not None else None
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # a constructor's own
            raise YamlLimitError(f"cannot read a value ({exc})", None) from None
    finally:
        loader.dispose()
    return node, data
