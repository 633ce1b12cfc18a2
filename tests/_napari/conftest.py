"""Fixtures of the widget tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def sessions_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "sessions"
    monkeypatch.setenv("NAPARI_SEGANY_SESSIONS", str(folder))
    return folder


@pytest.fixture
def shown_errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The error notifications the widget shows."""
    from napari_segany._napari import widget as widget_module  # Qt only for the tests that use it

    errors: list[str] = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    return errors
