"""The package's exports, its ``__all__``, every module's ``__all__`` and docs/api.md agree."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import napari_segany as sg

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_all_lists_exactly_the_exports_and_each_resolves() -> None:
    assert sorted(sg.__all__) == sorted([*sg._EXPORTS, "__version__"])
    for name in sg.__all__:
        assert getattr(sg, name) is not None, name


def test_the_api_page_lists_every_export_where_it_is_defined() -> None:
    rows = re.findall(r"^\| `sg\.(\w+)` \| .* \| `([\w.]+)` \|$", API_PAGE.read_text(), re.M)
    assert sorted(name for name, _ in rows) == sorted(n for n in sg.__all__ if n != "__version__")
    for name, module in rows:
        assert getattr(sg, name).__module__ == module, name


def test_every_module_declares_all_and_has_what_it_lists() -> None:
    names = [
        m.name
        for m in pkgutil.walk_packages(sg.__path__, "napari_segany.")
        if not m.name.endswith("__main__")
    ]
    assert len(names) > 90  # the walk found the package
    for name in names:
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names {missing}, which it does not have"
        assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats names"
