"""Name -> component registries. A spec names registered components; it never names code."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a public name to a component (class or function).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("unet")
    ... class UNet: ...

    A component whose module needs torch can be registered lazily, as ``"module:attribute"``
    (`lazy`): its name is known (and `check` passes) without importing it; `get` imports it.
    That keeps spec validation torch-free.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            self._items[name] = getattr(importlib.import_module(module), attr)
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def check(self, name: str) -> str:
        """`name` if it is registered, else `ValueError` (for pydantic validators)."""
        if name not in self:
            raise ValueError(self._unknown(name))
        return name

    def _unknown(self, name: str) -> str:
        known = ", ".join(self.names()) or "none"
        return f"unknown {self.kind} {name!r}; registered: {known}"

    def names(self) -> list[str]:
        return sorted({*self._items, *self._lazy})

    def in_order(self) -> list[str]:
        """Names in the order they were declared (lazy ones first)."""
        return [*self._lazy, *(n for n in self._items if n not in self._lazy)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy


#: Segmentation models (`ModelSpec.arch`). The UNet family spans large teachers and tiny students.
MODELS: Registry = Registry("model", lazy={"unet": "distillery.models.unet:UNet"})

#: Stage kinds, in the order an experiment runs them (`distillery.stages.kinds.StageKind`).
#: A new kind is one module in `distillery/stages/` plus one line here.
STAGES: Registry = Registry(
    "stage",
    lazy={
        "size": "distillery.stages.size:SIZE",
        "teacher": "distillery.stages.train:TEACHER",
        "student": "distillery.stages.train:STUDENT",
        "distill": "distillery.stages.train:DISTILL",
        "profile": "distillery.stages.profile:PROFILE",
        "report": "distillery.stages.report:REPORT",
        "compare": "distillery.stages.compare:COMPARE",
    },
)
