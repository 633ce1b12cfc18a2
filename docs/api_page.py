"""Write docs/api.md from the package's exports: ``python docs/api_page.py``.

tests/test_api.py fails when the page and ``napari_segany.__all__`` differ.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import napari_segany as sg

HEAD = """# The Python API

Everything `import napari_segany as sg` exports (`sg.__all__`), with the first paragraph
of its docstring; `help(sg.NAME)` gives the rest. `tests/test_api.py` keeps this page,
`sg.__all__` and the package's exports in step (`python docs/api_page.py` writes it).
Modules below the top level are not part of the API (their names may move); each
subpackage's `__all__` names what it offers the others.
"""


def kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "Exceptions" if issubclass(obj, BaseException) else "Classes"
    return "Functions"


def main() -> None:
    groups: dict[str, list[str]] = {"Functions": [], "Classes": [], "Exceptions": []}
    for name in sorted((n for n in sg.__all__ if n != "__version__"), key=str.lower):
        obj = getattr(sg, name)
        first = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
        groups[kind(obj)].append(
            f"| `sg.{name}` | {first.replace('|', '/')} | `{obj.__module__}` |"
        )
    out = [HEAD]
    for title, rows in groups.items():
        out += [f"## {title}", "", "| name | what it is | defined in |", "| --- | --- | --- |"]
        out += [*rows, ""]
    out.append("`sg.__version__` is the package's version.\n")
    (Path(__file__).parent / "api.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
