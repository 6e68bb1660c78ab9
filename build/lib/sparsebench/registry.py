"""A small name -> entry registry, filled by decorators in the modules of a package.

Metrics and allocators each live in one module that registers itself; `discover` imports every
module of the package so that adding a method is one new file (plus its YAML in conf/).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, Iterator, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def add(self, name: str, entry: Entry) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        self.discover()
        if name not in self._entries:
            from sparsebench.errors import ConfigError

            raise ConfigError(f"{self.kind}: unknown name {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
