"""A small name -> entry registry, filled by decorators in the modules of a package.

Metrics and allocators each live in one module that registers itself; `discover` imports every
module of the package so that adding a method is one new file (plus its YAML in conf/).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Generic, Iterator, TypeVar

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


def make_params(params: type, values: dict[str, Any], key: str, kind: str, name: str) -> dict[str, Any]:
    """Check the configuration keys ``values`` of the method ``name`` against its ``params`` dataclass
    (and the dataclass's ``check(key)``, if it has one); returns them as plain keyword arguments."""
    from sparsebench.errors import ConfigError

    allowed = {f.name for f in dataclasses.fields(params)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a key of {kind} {name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")
    checked = params(**values)
    check = getattr(checked, "check", None)
    if check is not None:
        check(key)
    return dataclasses.asdict(checked)
