"""Compose a YAML document into nodes that keep only what the loader reads, within a budget of nodes.

PyYAML's composer gives every node two marks of its own (line, column, offset, snippet buffer) and recurses
once per level. These nodes share one mark per line (``.start_mark.line`` is all the loader reads) and
equal short strings; each plain scalar's tag is resolved once per distinct text; the loop is flat. Past
MAX_NODES nodes or MAX_DEPTH levels composing stops, so no document, in any style, costs more than that
(bench/config_load.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import yaml
from yaml.composer import Composer, ComposerError
from yaml.error import Mark
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_NODES: Final = 500_000  # keys, values, lists and mappings of one config (README, "Limits")
MAX_DEPTH: Final = 200  # lists and mappings inside each other (a config needs 6)
_SHARED_TEXT: Final = 64  # strings up to this long are shared between equal nodes


class NodeBudgetError(Exception):
    """The document has more than MAX_NODES nodes; ``line`` is where the composer stopped (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__(f"more than {MAX_NODES:,} nodes")
        self.line = line


class NestingError(Exception):
    """The document nests lists and mappings more than MAX_DEPTH deep."""


class LineMark(Mark):
    """The one mark the nodes of a line share: its line, and no column, offset or snippet of its own."""

    __slots__ = ("line",)
    name, index, column, buffer, pointer = "<config>", 0, 0, None, 0

    def __init__(self, line: int) -> None:  # Mark's own __init__ would give it all six attributes
        self.line = line


class LeanComposer(Composer):
    """PyYAML's Composer with shared marks, shared strings, memoized tags and a node budget."""

    # provided by the parser (libyaml's or PyYAML's) and the resolver this is combined with
    get_event: Callable[[], Any]
    peek_event: Callable[[], Any]
    check_event: Callable[..., bool]
    resolve: Callable[..., str]

    def __init__(self) -> None:
        super().__init__()
        self._mark = LineMark(-1)  # the latest line's (events come in the order of their lines)
        self._texts: dict[str, str] = {}
        self._plain_tags: dict[str, str] = {}
        self.nodes = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:
        """Compose the next node and everything under it, without recursion: one event at a time.

        The loop of the whole load that runs most (once per event: a million for 50,000 routes), so it
        calls nothing it need not.
        """
        open_nodes: list[Node] = []  # the lists and mappings being filled, innermost last
        keys: list[Node | None] = []  # per open mapping: its key waiting for a value
        get_event = self.get_event
        while True:
            event = get_event()
            kind = type(event)
            if kind is SequenceEndEvent or kind is MappingEndEvent:
                node, _ = open_nodes.pop(), keys.pop()
            else:
                self.nodes += 1
                if self.nodes > MAX_NODES:
                    raise NodeBudgetError(event.start_mark.line + 1)
                node = self._alias(event) if kind is AliasEvent else self._node(event, kind)
                if kind is SequenceStartEvent or kind is MappingStartEvent:
                    if len(open_nodes) == MAX_DEPTH:
                        raise NestingError
                    open_nodes.append(node)
                    keys.append(None)
                    continue
            if not open_nodes:
                return node
            parent = open_nodes[-1]
            if type(parent) is SequenceNode:
                parent.value.append(node)
            elif keys[-1] is None:
                keys[-1] = node
            else:
                parent.value.append((keys[-1], node))
                keys[-1] = None

    def _alias(self, event: Any) -> Node:
        if event.anchor not in self.anchors:
            raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
        found: Node = self.anchors[event.anchor]
        return found

    def _node(self, event: Any, kind: type) -> Node:
        """Return the node a scalar or collection-start event stands for (registering its anchor)."""
        anchor = event.anchor
        if anchor is not None and anchor in self.anchors:
            raise ComposerError(f"found duplicate anchor {anchor!r}; first occurrence", None,
                                "second occurrence", event.start_mark)
        mark = self._mark
        if event.start_mark.line != mark.line:
            mark = self._mark = LineMark(event.start_mark.line)
        node: Node
        if kind is ScalarEvent:
            value: str = event.value
            if len(value) <= _SHARED_TEXT:
                value = self._texts.setdefault(value, value)
            tag = self._plain_tags.get(value) if event.implicit == (True, False) else None
            node = ScalarNode(tag or self._tag(event), value, mark, mark, style=event.style)
        elif kind is SequenceStartEvent:
            tag = event.tag if event.tag not in (None, "!") else self.resolve(SequenceNode, None, event.implicit)
            node = SequenceNode(tag, [], mark, mark, flow_style=event.flow_style)
        else:
            tag = event.tag if event.tag not in (None, "!") else self.resolve(MappingNode, None, event.implicit)
            node = MappingNode(tag, [], mark, mark, flow_style=event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def _tag(self, event: Any) -> str:
        """Return a scalar's tag: explicit, or resolved from its text (remembered when the text alone decides)."""
        tag: str | None = event.tag
        if tag is not None and tag != "!":
            return tag
        resolved: str = self.resolve(ScalarNode, event.value, event.implicit)
        if event.implicit == (True, False):  # plain: the tag depends on the text alone
            self._plain_tags[event.value] = resolved
        return resolved


class ExactLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, LeanComposer,
                  yaml.resolver.Resolver):
    """The pure-Python parser (its error messages are the same on every machine) with the lean composer."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        LeanComposer.__init__(self)
        yaml.resolver.Resolver.__init__(self)


FastLoader: type[Any] | None = None
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _FastLoader(LeanComposer, CParser, yaml.resolver.Resolver):
        """libyaml's parser with the lean composer (on an error, ExactLoader parses again for its message)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            LeanComposer.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    FastLoader = _FastLoader
