"""In-memory index of open waits, so an event finds its candidate waits without CEL.

Each wait is filed under its event key and, when its expression has a top-level
``input.<path> == <literal>`` equality, under that path and the literal's
:func:`~tether.engine.expression_shapes.equality_key`. An event then costs one dict
lookup per distinct indexed path of its key, plus the key's unconstrained waits.

Memory is the point at 100,000+ waits: a bucket holding one wait stores the id itself
(a set only appears once two waits share a literal), entries are plain tuples, and
empty buckets, paths and keys are dropped as soon as their last wait leaves.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from tether.engine.expression_shapes import ExpressionShape, equality_key, lookup_path

__all__ = ["WaitIndex"]

T = TypeVar("T", bound=Hashable)
_E = TypeVar("_E")
_ABSENT: Any = object()


class _Many(set[_E]):
    """A bucket of two or more waits (ids are hashable, so never mistaken for one)."""

    __slots__ = ()


class _Buckets(dict[Hashable, Any]):
    """Equality key -> wait id or ``_Many`` of ids, for one path of one event key.

    Its size doubles as the path's reference count: the path is dropped when it empties.
    """

    __slots__ = ("path",)

    def __init__(self, path: tuple[str, ...]) -> None:
        super().__init__()
        self.path = path


class _KeyIndex(Generic[T]):
    """Everything filed under one event key."""

    __slots__ = ("event_key", "paths", "unconstrained")

    def __init__(self, event_key: str) -> None:
        self.event_key = event_key
        self.paths: dict[tuple[str, ...], _Buckets] = {}
        self.unconstrained: set[T] = set()


# Per wait: (key index, buckets or None if unconstrained, equality key or None).
_Entry = tuple[_KeyIndex[Any], _Buckets | None, Hashable]


class WaitIndex(Generic[T]):
    """Candidate lookup for open waits; ``candidates`` is a superset of the true matches."""

    __slots__ = ("_by_key", "_entries")

    def __init__(self) -> None:
        self._entries: dict[T, _Entry] = {}
        self._by_key: dict[str, _KeyIndex[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, wait_id: object) -> bool:
        return wait_id in self._entries

    def add(self, wait_id: T, event_key: str, shape: ExpressionShape) -> None:
        """File a wait under its first usable equality; re-adding an id replaces it."""
        if wait_id in self._entries:
            self.remove(wait_id)
        key_index = self._by_key.get(event_key)
        if key_index is None:
            key_index = self._by_key[event_key] = _KeyIndex(event_key)
        for equality in shape.equalities:
            key = equality_key(equality.value)
            if key is not None:
                break
        else:
            key_index.unconstrained.add(wait_id)
            self._entries[wait_id] = (key_index, None, None)
            return
        buckets = key_index.paths.get(equality.path)
        if buckets is None:
            buckets = key_index.paths[equality.path] = _Buckets(equality.path)
        existing = buckets.get(key, _ABSENT)
        if existing is _ABSENT:
            buckets[key] = wait_id
        elif isinstance(existing, _Many):
            existing.add(wait_id)
        else:
            buckets[key] = _Many((existing, wait_id))
        self._entries[wait_id] = (key_index, buckets, key)

    def remove(self, wait_id: T) -> bool:
        """Forget a wait (idempotent); returns whether it was present."""
        entry = self._entries.pop(wait_id, None)
        if entry is None:
            return False
        key_index, buckets, key = entry
        if buckets is None:
            key_index.unconstrained.discard(wait_id)
        else:
            held = buckets[key]
            if isinstance(held, _Many):
                held.discard(wait_id)
                if len(held) == 1:
                    buckets[key] = next(iter(held))  # back to the compact form
            else:
                del buckets[key]
            if not buckets:
                del key_index.paths[buckets.path]
        if not key_index.paths and not key_index.unconstrained:
            del self._by_key[key_index.event_key]
        return True

    def candidates(self, event_key: str, payload: Mapping[str, Any]) -> list[T]:
        """Waits on ``event_key`` whose expression might be true for ``payload``."""
        key_index = self._by_key.get(event_key)
        if key_index is None:
            return []
        found: list[T] = list(key_index.unconstrained)
        for path, buckets in key_index.paths.items():
            key = equality_key(lookup_path(payload, path))
            if key is None:
                continue
            held = buckets.get(key, _ABSENT)
            if held is _ABSENT:
                continue
            if isinstance(held, _Many):
                found.extend(held)
            else:
                found.append(held)
        return found
