"""Registries of strategies and benchmarks, filled by discovery.

A plugin is a module in the ``strategies`` or ``benchmarks`` package (found by scanning the folder)
or in a third-party package that declares an entry point in the group ``cml_bench.strategies`` /
``cml_bench.benchmarks`` pointing at the module. Importing the module runs its ``@register`` calls.
A module that fails to import is remembered, and its error is raised only when a name it would
provide is asked for, so one broken plugin never breaks ``list`` or the other plugins.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

HEADS = ("pooled", "cos", "ssca")
"""Heads a strategy name can be suffixed with (``prs+ssca``); no suffix means ``pooled``."""


class RegistryError(KeyError):
    """Unknown or duplicate name; ``str()`` is a one-line message for the user."""

    def __str__(self) -> str:  # KeyError quotes its message; a user should read it plainly
        return str(self.args[0])


@dataclass
class Registry(Generic[T]):
    """Name -> entry mapping for one kind of plugin (strategies or benchmarks)."""

    kind: str
    package: str
    entry_point_group: str
    _entries: dict[str, T] = field(default_factory=dict)
    _broken: dict[str, BaseException] = field(default_factory=dict)
    _discovered: bool = False

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RegistryError(f"Duplicate {self.kind} name '{name}': it is registered twice.")
        if "+" in name:
            raise RegistryError(f"{self.kind} name '{name}' must not contain '+' (reserved for heads).")
        self._entries[name] = entry
        return entry

    def discover(self) -> None:
        """Import every plugin module once (folder scan, then entry points)."""
        if self._discovered:
            return
        self._discovered = True
        modules: list[tuple[str, str]] = []
        try:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    modules.append((info.name, f"{self.package}.{info.name}"))
        except ImportError as err:  # pragma: no cover - the package ships with cml_bench
            self._broken[self.package] = err
        for ep in metadata.entry_points(group=self.entry_point_group):
            modules.append((ep.name, ep.value.split(":")[0]))
        for short, module in modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - remembered and raised when chosen
                self._broken[short] = err

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    @property
    def broken(self) -> dict[str, BaseException]:
        self.discover()
        return dict(self._broken)

    def get(self, name: str) -> T:
        self.discover()
        if name in self._entries:
            return self._entries[name]
        key = name.replace("-", "_")
        for module, err in self._broken.items():
            if key == module.replace("-", "_"):
                raise RegistryError(
                    f"The {self.kind} plugin module '{module}' failed to import: "
                    f"{type(err).__name__}: {err}"
                ) from err
        raise RegistryError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        valid = self.names()
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (
            f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(valid)}. "
            f"See `python -m cml_bench list`."
        )


STRATEGIES: Registry[Any] = Registry("strategy", "strategies", "cml_bench.strategies")
BENCHMARKS: Registry[Any] = Registry("benchmark", "benchmarks", "cml_bench.benchmarks")


def split_head(name: str) -> tuple[str, str]:
    """``"prs+ssca"`` -> ``("prs", "ssca")``; no suffix -> ``pooled``.

    >>> split_head("finetune")
    ('finetune', 'pooled')
    >>> split_head("prs+cos")
    ('prs', 'cos')
    """
    base, _, head = name.partition("+")
    head = head or "pooled"
    if head not in HEADS:
        close = difflib.get_close_matches(head, HEADS, n=1)
        hint = f" Did you mean '+{close[0]}'?" if close else ""
        raise RegistryError(
            f"Unknown head suffix '+{head}' in '{name}'.{hint} Available heads: "
            f"{', '.join('+' + h for h in HEADS if h != 'pooled')} (none = pooled)."
        )
    return base, head


def decorator(registry: Registry[Any], build_entry: Callable[..., Any]) -> Callable[..., Any]:
    """Make a ``@register_x(name, **meta)`` decorator that wraps the function in an entry."""

    def register(name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            registry.register(name, build_entry(name=name, build=fn, **meta))
            return fn

        return wrap

    return register
