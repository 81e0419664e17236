"""One small name -> factory registry, shared by backbones, datasets and metrics.

Entries register themselves with a decorator; the core never imports a particular
backbone or dataset. An entry may also be *declared* first (:meth:`Registry.declare`):
its name, module and metadata are known without importing anything, and the module is
imported the first time the entry's factory is needed, so listing the backbones or
training one of them does not import the others (and the libraries they use). Unknown
names raise a ``ValueError`` that lists the valid names and suggests the closest one.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "RegistryEntry", "BACKBONES", "DATASETS", "METRICS", "SCORES", "METHODS"]


@dataclass(frozen=True)
class RegistryEntry:
    """A registered factory and the metadata it was registered with."""

    name: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Map names to factories.

    Parameters
    ----------
    kind : str
        What the registry holds ("backbone", "dataset", "metric"); used in messages.
    populate : str or tuple of str, optional
        Modules to import before the first lookup, so that their entries register
        themselves (``"physforecast.backbones"``). Importing is lazy to keep
        ``import physforecast`` cheap.

    Examples
    --------
    >>> reg = Registry("toy")
    >>> @reg.register("double", paper="none")
    ... def double(x):
    ...     return 2 * x
    >>> reg.create("double", x=3)
    6
    """

    def __init__(self, kind: str, populate: str | tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self._populate = (populate,) if isinstance(populate, str) else tuple(populate or ())
        self._entries: dict[str, RegistryEntry] = {}
        self._declared: dict[str, tuple[str, dict[str, Any]]] = {}

    def declare(self, name: str, module: str, **meta: Any) -> None:
        """Make ``name`` known without importing ``module``, which registers it.

        :meth:`names`, ``in`` and :meth:`info` answer from ``meta`` alone; :meth:`entry`
        and :meth:`create` import ``module`` on first use (its registration then supplies
        the factory; its metadata wins over the declared one).
        """
        if name not in self._entries:
            self._declared[name] = (str(module), dict(meta))

    def info(self, name: str) -> dict[str, Any]:
        """The metadata of ``name``, without importing its module when it was declared."""
        self._ensure_populated()
        if name in self._entries:
            return dict(self._entries[name].meta)
        if name in self._declared:
            return {"module": self._declared[name][0], **self._declared[name][1]}
        return self.entry(name).meta  # the unknown-name error

    def _ensure_populated(self) -> None:
        modules, self._populate = self._populate, ()
        for module in modules:
            importlib.import_module(module)

    def register(
        self, name: str, **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers ``factory`` under ``name`` with metadata ``meta``."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name].factory is not factory:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2
                )
            declared = self._declared.pop(name, None)
            merged = {**(declared[1] if declared else {}), **meta}
            self._entries[name] = RegistryEntry(name, factory, merged)
            return factory

        return decorator

    def names(self, filter: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by an fnmatch pattern."""
        self._ensure_populated()
        names = sorted({*self._entries, *self._declared})
        if filter:
            names = [n for n in names if fnmatch.fnmatch(n, filter)]
        return names

    def __contains__(self, name: object) -> bool:
        self._ensure_populated()
        return name in self._entries or name in self._declared

    def entry(self, name: str) -> RegistryEntry:
        """The entry for ``name``; a ``ValueError`` naming the valid choices otherwise."""
        self._ensure_populated()
        if name not in self._entries and name in self._declared:
            module = self._declared[name][0]
            importlib.import_module(module)  # registers the factory
            if name not in self._entries:
                raise RuntimeError(
                    f"{module} was declared to register {self.kind} {name!r}; it did not"
                )
        try:
            return self._entries[name]
        except KeyError:
            valid = sorted({*self._entries, *self._declared})
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(valid)}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory of ``name``; keyword arguments that are ``None`` are dropped.

        An option the factory does not take is a ``ValueError`` that lists the valid ones.
        """
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        entry = self.entry(name)
        valid = self.options(name)
        unknown = [k for k in kwargs if valid is not None and k not in valid]
        if unknown:
            close = difflib.get_close_matches(unknown[0], valid or [], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{self.kind} {name!r} does not take option {unknown[0]!r}.{hint} "
                f"Valid options: {', '.join(valid or [])}"
            )
        return entry.factory(**kwargs)

    def options(self, name: str) -> list[str] | None:
        """Keyword options of ``name``'s factory (or of the class it returns); ``None`` if open-ended."""
        factory = self.entry(name).factory
        for target in (factory, _annotated_return(factory)):
            if target is None:
                continue
            try:
                params = inspect.signature(target).parameters.values()
            except (TypeError, ValueError):  # builtins have no signature
                continue
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return [
                    p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                ]
        return None


def _annotated_return(factory: Callable[..., Any]) -> type | None:
    """The class a factory is annotated to return, when it is one."""
    try:
        ret = typing.get_type_hints(factory).get("return")
    except (NameError, TypeError):
        return None
    return ret if isinstance(ret, type) else None


BACKBONES = Registry("backbone", populate="physforecast.backbones")
DATASETS = Registry("dataset", populate="physforecast.datasets")
METRICS = Registry("metric", populate="physforecast.metrics")
SCORES = Registry("score", populate="physforecast.search.scores")
#: Training methods (``supervised``, ``beamvq``...): each entry is a class implementing
#: :class:`physforecast.methods.Method`; its ``config`` metadata is its config section.
METHODS = Registry("method", populate="physforecast.methods")  # ``supervised``
# The methods of other packages, imported when first used (``section``: they have a config
# section, whose class their module defines), so that a supervised run never loads them.
for _name, _module in (
    ("beamvq", "physforecast.beamvq.method"),
    ("students", "physforecast.inference.method"),
    ("stpad", "physforecast.stpad.method"),
    ("vae", "physforecast.generative.method"),
):
    METHODS.declare(_name, _module, section=True)
del _name, _module
