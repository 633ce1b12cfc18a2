"""The small Qt pieces the dock widget is built from, and its fit to the dock's title."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLayout,
    QPushButton,
    QSizePolicy,
    QWidget,
)

__all__ = ["WrappingLabel", "button", "fit_dock_title", "form", "group", "unit_spin"]


class WrappingLabel(QLabel):
    """A label for long text (paths, errors, slice lists) that never widens the dock.

    It wraps at spaces and path separators; a word longer than the width is cut, and the
    whole text is in the tooltip.
    """

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.setWordWrap(True)
        # Ignored: the layout decides the width, the text only the height.
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.setText(text)

    def setText(self, text: str | None) -> None:
        """Show ``text``, whole in the tooltip."""
        super().setText(text)
        self.setToolTip(text or "")


def button(text: str, clicked: Callable[[], Any], tip: str = "") -> QPushButton:
    """A push button that calls ``clicked``."""
    widget = QPushButton(text)
    widget.setToolTip(tip)
    widget.clicked.connect(clicked)
    return widget


def form(*rows: tuple[str, QWidget] | QWidget) -> QFormLayout:
    """A form of ``(label, field)`` rows; a lone widget spans its row."""
    layout = QFormLayout()
    for row in rows:
        if isinstance(row, tuple):
            layout.addRow(*row)
        else:
            layout.addRow(row)
    return layout


def group(title: str, layout: QLayout) -> QGroupBox:
    """A titled box around ``layout``."""
    box = QGroupBox(title)
    box.setLayout(layout)
    return box


def unit_spin(value: float, tip: str) -> QDoubleSpinBox:
    """A spin box for a fraction, 0 to 1 by 0.05."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 1.0)
    box.setSingleStep(0.05)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def fit_dock_title(widget: QWidget) -> None:
    """Make ``widget`` at least as wide as the title bar of the dock it is in needs.

    The dock takes its width from the widget, not from its title bar (napari's custom
    title bar reports no minimum width), so without this the title is cut off.
    """
    dock = widget.parentWidget()
    bar = dock.titleBarWidget() if isinstance(dock, QDockWidget) else None
    layout = bar.layout() if bar is not None else None
    if layout is None:
        return
    needed = layout.totalMinimumSize().width()  # with the title bar's own margins
    if needed > widget.minimumWidth():
        widget.setMinimumWidth(needed)
