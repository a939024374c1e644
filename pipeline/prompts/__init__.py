"""The prompt template language: ``{a|b}``, ``{2$$a|b|c}``, ``{0.5::a|b}``, ``__wildcard__``.

Pure: parsing, counting, expanding and sampling do no I/O beyond reading wildcard files (done,
and cached, by ``WildcardStore``). The grammar is documented at the top of ``parser``.

    node = parse("a {red|blue} __animal__")     # TemplateError names the position
    store = WildcardStore(Path("wildcards"))    # lazy; store.options(name) checks a name early
    count(node, store)                          # exact size, without expanding
    max_chars(node, store)                      # longest expansion, without expanding
    for prompt in expand(node, store): ...      # lazy, deterministic order
    sample(node, random.Random(seed), store)    # one weighted random draw

Prompts that must reach the server verbatim are simply not parsed (``raw: true`` in a job).
``importers`` reads the WebUI "prompts from file" and kohya sample-prompt line formats.
"""

from pipeline.prompts.combinatorial import count, expand, max_chars
from pipeline.prompts.nodes import (Alternatives, Literal, Node, Option, Sequence, Wildcard,
                                    nesting, wildcard_names)
from pipeline.prompts.parser import parse
from pipeline.prompts.sampling import sample
from pipeline.prompts.wildcards import WildcardStore

__all__ = ["Alternatives", "Literal", "Node", "Option", "Sequence", "Wildcard", "WildcardStore",
           "count", "expand", "max_chars", "nesting", "parse", "sample", "wildcard_names"]
