"""Prepare a composed node tree for reading: duplicate keys refused, YAML merge keys (``<<``) applied.

Merging is bounded. A mapping merged into others is prepared first, so PyYAML's flatten_mapping only ever
copies flat mappings, and every key it copies counts against one budget of MAX_NODES for the document: an
anchored mapping of 10,000 keys merged into 10,000 others (a 400 KB file) is refused at once, where it
would copy 100 million keys. A mapping that merges itself is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import yaml

from probe.config.composer import MAX_NODES
from probe.config.nodes import Context, join

MERGE_TAG: Final = "tag:yaml.org,2002:merge"
Where = tuple["Where", str | int] | None  # the field path, made into text only for an error


def path_of(where: Where) -> str:
    """Return ``where`` as the field path errors show (``routes[0].smart_hosts[1]``)."""
    steps: list[str | int] = []
    while where is not None:
        where, step = where
        steps.append(step)
    path = ""
    for step in reversed(steps):
        path = f"{path}[{step}]" if isinstance(step, int) else join(path, step)
    return path


@dataclass
class _Preparing:
    """One preparation: the nodes done, the mappings being merged, and the keys copied so far."""

    ctx: Context
    done: set[int] = field(default_factory=set)
    merging: set[int] = field(default_factory=set)
    copied: int = 0

    def visit(self, node: yaml.Node, where: Where) -> None:
        if id(node) in self.done:
            return
        self.done.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.visit(item, (where, index))
        elif isinstance(node, yaml.MappingNode):
            self._mapping(node, where)

    def _mapping(self, node: yaml.MappingNode, where: Where) -> None:
        _refuse_duplicates(self.ctx, node, where)
        if any(key.tag == MERGE_TAG for key, _ in node.value):
            self.merging.add(id(node))
            self._merge(node, where)
            self.merging.discard(id(node))
        for key_node, value_node in node.value:
            self.visit(value_node, (where, str(key_node.value)))

    def _merge(self, node: yaml.MappingNode, where: Where) -> None:
        """Merge the mappings under ``<<`` (each prepared first), counting what is copied; later keys win."""
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if id(source) in self.merging:
                    raise self.ctx.error(source, path_of(where), "invalid YAML merge: a mapping merges itself")
                self.visit(source, (where, "<<"))
                self.copied += len(source.value) if isinstance(source, yaml.MappingNode) else 0
        if self.copied > MAX_NODES:
            raise self.ctx.error(node, path_of(where), f"too large: YAML merge keys (<<) copy more than "
                                 f"{MAX_NODES:,} keys by this line; one instance takes at most that many")
        try:
            self.ctx.constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            raise self.ctx.error(node, path_of(where), f"invalid YAML merge: {exc.problem}") from None
        latest: dict[object, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:  # a key given after a merge overrides the merged one
            latest[(key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)] = (
                key_node, value_node)
        node.value = list(latest.values())


def _refuse_duplicates(ctx: Context, node: yaml.MappingNode, where: Where) -> None:
    first_lines: dict[object, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
            marker = (key_node.tag, key_node.value)
            if marker in first_lines:
                raise ctx.error(key_node, join(path_of(where), str(key_node.value)),
                                f"duplicate key; the first is at line {first_lines[marker]}")
            first_lines[marker] = key_node.start_mark.line + 1


def prepare(ctx: Context, root: yaml.Node) -> None:
    """Reject duplicate keys and apply YAML merge keys (``<<``) in the whole tree, each node once."""
    _Preparing(ctx).visit(root, None)
