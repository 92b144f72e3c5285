"""Lazy package exports (PEP 562), so naming a package's API costs no imports.

Each stage package lists its public API in `__all__` and resolves a name on
first use, so that `import newsletter.posts` (or `newsletter --help`) does not
pull in Markdown, premailer or SQLAlchemy until something needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` resolving each name from `package.<submodule>`."""

    def __getattr__(name: str) -> object:
        submodule = names.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    return __getattr__
