"""Registries of strategies, benchmarks and heads, filled by discovery.

A plugin is a module in the ``strategies`` or ``benchmarks`` package installed with cml_bench (found
by scanning that package's folder; the built-in heads are in ``cml_bench.models``), in a third-party
package that declares an entry point in the group ``cml_bench.strategies`` / ``cml_bench.benchmarks``
/ ``cml_bench.heads`` pointing at the module, or a ``*.py`` file in a folder named explicitly
(``--plugins DIR``, or ``$CML_BENCH_PLUGINS``: folders separated by ``os.pathsep``); one file may
register any of the three. Importing the module runs its ``@register`` calls. Nothing else is imported: a
``strategies/`` or ``benchmarks/`` folder in the current directory (first on ``sys.path`` under
``python -m``) is never taken for the installed package, so running from a folder that happens to
hold one neither executes its code nor hides the built-in plugins.
A module that fails to import is remembered, and its error is raised only when a name it would
provide is asked for, so one broken plugin never breaks ``list`` or the other plugins.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

PLUGINS_ENV = "CML_BENCH_PLUGINS"
"""Environment variable naming plugin folders (``os.pathsep``-separated); ``--plugins DIR`` sets it,
so that sweep worker processes load the same plugins."""

INSTALL_ROOT = Path(__file__).resolve().parent.parent
"""Where cml_bench is installed: its plugin packages ``strategies`` and ``benchmarks`` lie beside it."""


class RegistryError(KeyError):
    """Unknown or duplicate name; ``str()`` is a one-line message for the user."""

    def __str__(self) -> str:  # KeyError quotes its message; a user should read it plainly
        return str(self.args[0])


@dataclass
class Registry(Generic[T]):
    """Name -> entry mapping for one kind of plugin (strategies, benchmarks or heads).

    ``names(pattern)`` sorts; iterating gives the names in the order they were registered (the
    built-in heads: pooled, cos, ssca), and ``name in registry`` asks without raising.
    """

    kind: str
    package: str
    entry_point_group: str
    plugin_dirs: bool = False  # also import the files of --plugins / $CML_BENCH_PLUGINS folders
    _entries: dict[str, T] = field(default_factory=dict)
    _broken: dict[str, BaseException] = field(default_factory=dict)
    _discovered: bool = False

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RegistryError(f"Duplicate {self.kind} name '{name}': it is registered twice.")
        if "+" in name:
            raise RegistryError(f"{self.kind} name '{name}' must not contain '+' (it joins a strategy and "
                                f"its head: prs+ssca).")
        self._entries[name] = entry
        return entry

    def discover(self) -> None:
        """Import every plugin module once (package folder scan, entry points, then plugin folders)."""
        if self._discovered:
            return
        self._discovered = True
        modules: list[tuple[str, str]] = []
        try:
            package = import_plugin_package(self.package)
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
        if self.plugin_dirs and plugin_folders():
            _load_plugin_files()

    def _import_plugin_files(self) -> None:
        for short, err in import_plugin_files().items():
            self._broken[short] = err

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    @property
    def broken(self) -> dict[str, BaseException]:
        self.discover()
        return dict(self._broken)

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(list(self._entries))

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:  # a registered name needs no scan: cml_bench.models registers its heads
            self.discover()
        return name in self._entries

    def get(self, name: str) -> T:
        if name in self:
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


STRATEGIES: Registry[Any] = Registry("strategy", "strategies", "cml_bench.strategies", plugin_dirs=True)
BENCHMARKS: Registry[Any] = Registry("benchmark", "benchmarks", "cml_bench.benchmarks", plugin_dirs=True)
HEADS: Registry[Any] = Registry("head", "cml_bench.models", "cml_bench.heads", plugin_dirs=True)
"""Heads: ``model.head``, and the suffix of a strategy name (``prs+ssca``; none means ``pooled``)."""
PLUGIN_REGISTRIES = (STRATEGIES, BENCHMARKS, HEADS)


def import_plugin_package(name: str) -> ModuleType:
    """The package ``name`` installed beside cml_bench (``strategies``, ``benchmarks``), never a
    same-named folder that comes earlier on ``sys.path`` (the current directory under ``python -m``).

    A name with no folder beside cml_bench (a test's package) is imported the usual way.
    """
    home = INSTALL_ROOT / name
    if not (home / "__init__.py").is_file():
        return importlib.import_module(name)
    loaded = sys.modules.get(name)
    if loaded is not None:
        if any(Path(p).resolve() == home for p in getattr(loaded, "__path__", [])):
            return loaded
        raise ImportError(f"a module '{name}' from {list(getattr(loaded, '__path__', [loaded.__file__]))} was "
                          f"imported before cml_bench's own ({home}); rename that folder or run from another one")
    spec = importlib.util.spec_from_file_location(name, home / "__init__.py", submodule_search_locations=[str(home)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin_module(dotted: str) -> ModuleType:
    """``importlib.import_module`` for a module of a plugin package, the package pinned to cml_bench's own."""
    import_plugin_package(dotted.partition(".")[0])
    return importlib.import_module(dotted)


_PLUGIN_FILES: dict[Path, BaseException | None] = {}  # every plugin file imported, and its error if any


def plugin_folders() -> list[Path]:
    """The folders named by ``--plugins`` / ``$CML_BENCH_PLUGINS``, in order."""
    return [Path(p) for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p]


def add_plugin_folders(folders: list[str]) -> None:
    """``--plugins DIR``: import every ``*.py`` in each folder (its ``@register`` calls add strategies,
    benchmarks or heads); recorded in ``$CML_BENCH_PLUGINS`` so worker processes load them too."""
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--plugins '{folder}' is not a folder (expected a folder of plugin "
                                    f"modules, each a *.py file that registers strategies or benchmarks).")
    known = [str(p) for p in plugin_folders()]
    added = [str(Path(f).resolve()) for f in folders if str(Path(f).resolve()) not in known]
    os.environ[PLUGINS_ENV] = os.pathsep.join(known + added)
    if added and any(registry._discovered for registry in PLUGIN_REGISTRIES):  # already scanned: add them now
        _load_plugin_files()


def _load_plugin_files() -> None:
    """Import the plugin folders' files once every registry holds its built-ins (so a plugin file never
    displaces one: a clash fails in the plugin file); each registry remembers the files that failed,
    since a file may have held any kind. Without plugin folders a registry scans only its own kind."""
    for registry in PLUGIN_REGISTRIES:
        registry.discover()
    for registry in PLUGIN_REGISTRIES:
        registry._import_plugin_files()


def import_plugin_files() -> dict[str, BaseException]:
    """Import the plugin folders' files (each once per process); the errors by module name."""
    errors: dict[str, BaseException] = {}
    for folder in plugin_folders():
        for path in sorted(folder.resolve().glob("*.py")):
            if path.name.startswith("_"):
                continue
            if path not in _PLUGIN_FILES:
                _PLUGIN_FILES[path] = _import_file(path)
            if _PLUGIN_FILES[path] is not None:
                errors[path.stem] = _PLUGIN_FILES[path]
    return errors


def _import_file(path: Path) -> BaseException | None:
    name = f"cml_bench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - remembered and raised when chosen
        del sys.modules[name]
        return err
    return None


def row_parts(label: str) -> tuple[str, str, str]:
    """A result row's base strategy, head and config tag (the leaderboard tags a strategy that ran
    with several configs: ``"prs+ssca [1a2b3c]"``; ``""`` if none). Unlike :func:`split_head` it
    accepts any head: a results folder may hold heads this install does not register.

    >>> row_parts("prs+ssca [1a2b3c]")
    ('prs', 'ssca', '1a2b3c')
    >>> row_parts("finetune")
    ('finetune', 'pooled', '')
    """
    core, _, tag = label.partition(" [")
    base, _, head = core.partition("+")
    return base, head or "pooled", tag.removesuffix("]")


def split_head(name: str) -> tuple[str, str]:
    """``"prs+ssca"`` -> ``("prs", "ssca")``; no suffix -> ``pooled``.

    >>> split_head("finetune")
    ('finetune', 'pooled')
    >>> split_head("prs+cos")
    ('prs', 'cos')
    """
    base, head, _ = row_parts(name)
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
