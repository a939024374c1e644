r"""Parse a prompt template into ``nodes``; a hand-written recursive descent parser.

Grammar (EBNF-ish)::

    template  := sequence EOF
    sequence  := ( text | escape | wildcard | group )*
    group     := "{" [ spec "$$" [ joiner "$$" ] ] option ( "|" option )* "}"
    spec      := INT | INT "-" INT | "-" INT | INT "-"       (k, k_min-k_max, 1-k_max, k_min-n)
    joiner    := text                                       (default ", ")
    option    := [ weight "::" ] sequence                  (an empty option is allowed: {a|})
    weight    := a number >= 0                              (default 1; only random mode uses it)
    wildcard  := "__" name "__"
    name      := segment ( "/" segment )*                   (letters, digits, "_", "-", ".", "*";
                                                             not starting with "_")
    escape    := "\" ( "{" | "}" | "|" | "\" | "_" | "$" | ":" )
    text      := any other character

Meaning:
- ``{a|b|c}`` is one of the options; groups nest: ``{a {x|y}|b}``.
- ``{2$$a|b|c}`` picks 2 distinct options (kept in list order) joined by ", ";
  ``{2$$ and $$a|b|c}`` joins with " and "; ``{1-2$$...}`` every k from 1 to 2;
  ``{-2$$...}`` is 1-2; ``{2-$$...}`` is 2 up to the number of options; ``{0-1$$...}`` may
  pick none. k above the number of options, ``{0$$...}`` and backwards ranges are errors.
- ``{0.5::a|2::b}`` weighs options for random sampling; combinatorial expansion ignores weights.
- ``__name__`` / ``__folder/name__`` / ``__file/key__`` is one line of a wildcard file (see
  ``wildcards``); ``__folder/*__`` is every wildcard under ``folder``.
- Only a group's *leading* text is checked for ``$$`` (choose-k) and each option's leading text
  for ``::`` (weight): the text before the first ``{``, ``|``, ``}`` or wildcard. Elsewhere, and
  everywhere outside braces, ``$$`` and ``::`` are literal. Write ``\$`` / ``\:`` to keep them
  literal in those leading positions.
- ``|`` is literal outside braces, so WebUI syntax passes through untouched: ``<lora:x:0.6>``,
  ``(word:1.2)``, ``[a:b:10]``, ``[cow|horse]``. Inside braces write ``\|`` for a literal bar.
- A backslash before any other character is kept, so the WebUI's own ``\(`` and ``\)`` survive;
  ``\\`` becomes one backslash.
- ``__`` not followed by a name character other than ``_`` (``a __ b``, ``^__^``, ``____``)
  is literal; ``\_`` is one literal underscore.
- Dynamic Prompts syntax that sdbatch does not implement is an error naming it, never sent on
  mangled: sampler prefixes ``{~a|b}`` (cyclical) and ``{@a|b}`` (combinatorial) on groups and
  ``__~name__`` / ``__@name__`` on wildcards, variables ``${name=...}`` and ``${name}``, wildcard
  parameters ``__name(var=value)__``, and Jinja2 templates ``{% ... %}``. Write ``\$``, ``\{``
  or ``\_`` to keep such characters literal.

Errors raise ``TemplateError`` with the 0-based offset of the problem: an unclosed ``{``, a
stray ``}``, an empty ``{}``, a bad choose-k spec or weight, an unterminated or malformed
wildcard name. A prompt that must reach the server verbatim is not parsed at all: the job layer
skips ``parse`` for prompts marked ``raw: true``.
"""

from __future__ import annotations

import functools
import math

from pipeline.errors import TemplateError
from pipeline.prompts.nodes import EMPTY, Alternatives, Literal, Node, Option, Sequence, Wildcard

ESCAPABLE = frozenset("{}|\\_$:")
_UNSUPPORTED_HINT = ("sdbatch expands every group itself (all options in combinatorial mode, a "
                     "weighted draw in mode: random); remove the prefix, or escape the character")
MAX_DEPTH = 64
_SPEC_HINT = ("write {2$$a|b|c}, a range {1-3$$a|b|c}, {-2$$...} (1-2) or {2-$$...} (2 to all); "
              "write \\$ for a literal $ at the start of a group")
_WEIGHT_HINT = ("a weight is a number >= 0 before '::', e.g. {0.5::a|2::b}; "
                "write \\: for a literal colon at the start of an option")


@functools.lru_cache(maxsize=2048)
def parse(text: str) -> Node:
    """Parse ``text`` into a node tree; raises ``TemplateError`` naming the offending position."""
    return _Parser(text).template()


def is_name_char(c: str) -> bool:
    return c.isalnum() or c in "_-./*"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, message: str, position: int, hint: str | None = None) -> TemplateError:
        return TemplateError(message, template=self.text, position=position, hint=hint)

    def template(self) -> Node:
        return self.sequence(in_group=False)

    def sequence(self, *, in_group: bool) -> Node:
        text, n = self.text, len(self.text)
        parts: list[Node] = []
        buf: list[str] = []
        while self.pos < n:
            c = text[self.pos]
            if c == "\\":
                buf.append(self.escape())
            elif c == "{":
                parts.append(Literal("".join(buf)))
                buf.clear()
                parts.append(self.group())
            elif c == "}":
                if in_group:
                    break
                raise self.fail("'}' without a matching '{'", self.pos,
                                "remove it, or write \\} for a literal brace")
            elif c == "|" and in_group:
                break
            elif c == "$" and text.startswith("${", self.pos):
                raise self.fail("Dynamic Prompts variables (${name=...}, ${name}) are not "
                                "supported", self.pos, "write the value out, or use a wildcard; "
                                "write \\$\\{ for a literal ${")
            elif c == "_" and text.startswith("__", self.pos) and text[self.pos + 2:self.pos + 3] \
                    in ("~", "@") and self.pos + 3 < n and is_name_char(text[self.pos + 3]):
                kind = "cyclical" if text[self.pos + 2] == "~" else "combinatorial"
                raise self.fail(f"Dynamic Prompts' {kind} wildcard prefix "
                                f"'__{text[self.pos + 2]}' is not supported", self.pos,
                                "write __name__; " + _UNSUPPORTED_HINT)
            elif self.at_wildcard():
                parts.append(Literal("".join(buf)))
                buf.clear()
                parts.append(self.wildcard())
            else:
                buf.append(c)
                self.pos += 1
        parts.append(Literal("".join(buf)))
        return _join(parts)

    def escape(self) -> str:
        nxt = self.text[self.pos + 1: self.pos + 2]
        if nxt and nxt in ESCAPABLE:
            self.pos += 2
            return nxt
        self.pos += 1
        return "\\"

    def at_wildcard(self) -> bool:
        text, p = self.text, self.pos
        return (text.startswith("__", p) and p + 2 < len(text) and is_name_char(text[p + 2])
                and text[p + 2] != "_")

    def wildcard(self) -> Wildcard:
        start = self.pos
        text, n = self.text, len(self.text)
        p = start + 2
        while p < n and is_name_char(text[p]) and not text.startswith("__", p):
            p += 1
        if text.startswith("(", p):
            raise self.fail("Dynamic Prompts wildcard parameters (__name(var=value)__) are not "
                            "supported", start, "write __name__, and put the value in the "
                            "wildcard file or the prompt")
        if not text.startswith("__", p):
            raise self.fail(f"wildcard {text[start:p]!r} is not closed with '__'", start,
                            "write __name__, or \\_\\_ for literal underscores")
        name = text[start + 2:p]
        segments = name.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise self.fail(f"bad wildcard name {name!r}", start,
                            "a name is a path inside the wildcards folder, e.g. __colors__ or "
                            "__people/hair__; no empty, '.' or '..' parts")
        self.pos = p + 2
        return Wildcard(name, start)

    def group(self) -> Alternatives:
        start = self.pos
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"braces nested deeper than {MAX_DEPTH}", start)
        self.pos += 1
        first = self.text[self.pos:self.pos + 1]
        if first in ("~", "@"):
            kind = "cyclical" if first == "~" else "combinatorial"
            raise self.fail(f"Dynamic Prompts' {kind} sampler prefix '{{{first}' is not "
                            "supported", start, _UNSUPPORTED_HINT)
        if first == "%":
            raise self.fail("Jinja2 templates ({% ... %}) are not supported", start,
                            "write the options out as {a|b}, or use wildcards")
        spec_at = self.pos
        spec = self.leading("$$")
        k_min, joiner = 1, ", "
        k_max: int | None = 1  # None: up to the number of options
        if spec is not None:
            k_min, k_max = self.choose_spec(spec, spec_at)
            found = self.leading("$$")
            if found is not None:
                joiner = found
        options: list[Option] = []
        while True:
            options.append(self.option())
            if self.pos >= len(self.text):
                raise self.fail("'{' is never closed", start,
                                "close it with '}', or write \\{ for a literal brace")
            closer = self.text[self.pos]
            self.pos += 1
            if closer == "}":
                break
        self.depth -= 1
        if spec is None and self.pos == start + 2:
            raise self.fail("empty '{}'", start, "write {a|} for an optional part, or \\{\\} "
                                                 "for literal braces")
        n = len(options)
        if spec is not None and n == 1 and isinstance(options[0].node, Wildcard):
            # {2$$__name__}: choose among the wildcard's options (Dynamic Prompts' spread);
            # their number is known only once the file is read, so -1 stands for "all".
            if k_max is not None and k_min > k_max:
                raise self.fail(f"choose-k range {spec.strip()!r} runs backwards", spec_at,
                                "write the smaller number first, e.g. {1-2$$__name__}")
            return Alternatives(tuple(options), k_min, -1 if k_max is None else k_max, joiner)
        if spec is not None:
            if k_max is not None and k_min > k_max:
                raise self.fail(f"choose-k range {spec.strip()!r} runs backwards", spec_at,
                                "write the smaller number first, e.g. {1-2$$a|b|c}")
            if max(k_min, k_max or 0) > n:
                raise self.fail(f"choose {spec.strip()} of {n} option{'s' * (n != 1)}", spec_at,
                                f"k can be at most the number of options ({n}); " + _SPEC_HINT)
        k_max = n if k_max is None else k_max
        weighted = sum(1 for o in options if o.weight > 0)
        if weighted < k_max:
            problem = ("every option has weight 0" if not weighted else
                       f"only {weighted} options have a weight above 0, but {k_max} are drawn")
            raise self.fail(problem, start, "give more options a weight above 0")
        return Alternatives(tuple(options), k_min, k_max, joiner)

    def option(self) -> Option:
        weight_at = self.pos
        raw = self.leading("::")
        weight = 1.0 if raw is None else self.weight(raw, weight_at)
        return Option(self.sequence(in_group=True), weight)

    def leading(self, marker: str) -> str | None:
        """Text up to ``marker`` if it comes before any ``{ | }`` or wildcard; else None.

        On success the position moves past the marker; on failure it stays put.
        """
        text, n = self.text, len(self.text)
        saved = self.pos
        buf: list[str] = []
        while self.pos < n:
            if text.startswith(marker, self.pos):
                self.pos += len(marker)
                return "".join(buf)
            c = text[self.pos]
            if c in "{|}" or self.at_wildcard():
                break
            if c == "\\":
                buf.append(self.escape())
            else:
                buf.append(c)
                self.pos += 1
        self.pos = saved
        return None

    def choose_spec(self, spec: str, at: int) -> tuple[int, int | None]:
        low, dash, high = (s.strip() for s in spec.strip().partition("-"))
        if dash:
            ok = bool(low or high) and (not low or _digits(low)) and (not high or _digits(high))
        else:
            ok = _digits(low)
        if not ok:
            raise self.fail(f"bad choose-k spec {spec!r}", at, _SPEC_HINT)
        k_min = int(low) if low else 1
        k_max = (int(high) if high else None) if dash else k_min
        if k_max == 0:
            raise self.fail("choose 0 options", at, "k must be at least 1; for an optional part "
                                                    "write {a|} or {0-1$$a|b}")
        return k_min, k_max

    def weight(self, raw: str, at: int) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0 or "_" in raw:
            raise self.fail(f"bad weight {raw!r}", at, _WEIGHT_HINT)
        return value


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _join(parts: list[Node]) -> Node:
    """Merge adjacent literals, drop empty ones, unwrap single parts."""
    merged: list[Node] = []
    for part in parts:
        if isinstance(part, Literal):
            if not part.text:
                continue
            if merged and isinstance(merged[-1], Literal):
                merged[-1] = Literal(merged[-1].text + part.text)
                continue
        merged.append(part)
    if not merged:
        return EMPTY
    return merged[0] if len(merged) == 1 else Sequence(tuple(merged))
