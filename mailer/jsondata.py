"""JSON from outside: one reader that turns every way a document can't be used into ValueError.

`json.loads` raises RecursionError, not a ValueError, for an array nested a few
thousand deep, and what parses can still be deep enough to exhaust the stack of
whatever walks it next (validation, error messages that echo the input, our own
recursive readers). Request bodies, webhook reports and the JSON-LD of imported
pages all come through here, so nesting past `MAX_DEPTH` is refused up front
with the same error as any other unreadable JSON.
"""

from __future__ import annotations

import json
from typing import Any

# Nothing we read nests more than a handful of levels; a hundred is generous.
MAX_DEPTH = 100


class UnreadableJSON(ValueError):
    """Not JSON we can use: not UTF-8, not JSON at all, or nested too deeply."""


def loads(data: str | bytes) -> Any:
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise UnreadableJSON(f"JSON nested more than {MAX_DEPTH} levels deep") from exc
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        raise UnreadableJSON(str(exc)) from exc
    if depth(value) > MAX_DEPTH:
        raise UnreadableJSON(f"JSON nested more than {MAX_DEPTH} levels deep")
    return value


def depth(value: Any) -> int:
    """How deep arrays and objects nest (a scalar is 0), without recursing."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
