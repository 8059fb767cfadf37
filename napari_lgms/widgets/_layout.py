"""Layout pieces both dock widgets use so they fit a laptop screen (1366x768, two docks stacked).

* :func:`scrolling_dock`: the widget's fields scroll vertically (never sideways); a footer
  with the buttons and the status stays in view below them;
* :class:`Section`: a titled block that folds away (rarely changed options);
* :func:`wrapping_label`: text that wraps to the dock's width.
"""
from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


PREFERRED_HEIGHT = 360  # two docks stacked on a 768 px screen share its height about evenly
MIN_CONTENTS = 6  # characters a combo box shows at its narrowest (the dock may be ~360 px wide)


class DockBody(QWidget):
    """A dock widget's top level: asks for at most :data:`PREFERRED_HEIGHT` (its fields scroll)."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt naming)
        hint = super().sizeHint()
        return QSize(hint.width(), min(hint.height(), PREFERRED_HEIGHT))


def narrow_combo(combo):
    """A combo box that may shrink to the dock's width (long names are elided, the list shows them whole)."""
    from qtpy.QtWidgets import QComboBox

    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(MIN_CONTENTS)
    return combo


def wrapping_label(text: str = "", selectable: bool = False, lines: int = 0, wrap: bool = True) -> QLabel:
    """A label that wraps to the dock's width (or, ``wrap=False``, one line cut at it: a path with
    its tooltip); ``lines``: height kept for at least that many lines."""
    label = QLabel(text)
    if lines:
        label.setMinimumHeight(label.fontMetrics().lineSpacing() * lines + 4)
    label.setWordWrap(wrap)
    label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # wrap to the width, never widen the dock
    label.setMinimumWidth(0)
    if selectable:
        label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


def compact_form() -> QFormLayout:
    """A form whose rows put the label above the field when the dock is too narrow for both."""
    form = QFormLayout()
    form.setRowWrapPolicy(QFormLayout.WrapLongRows)
    return form


def button_row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        row.addWidget(widget)
    return row


class Section(QWidget):
    """A title button that shows or hides ``body`` (collapsed: one line of height)."""

    def __init__(self, title: str, body: QWidget, expanded: bool = False, parent=None):
        super().__init__(parent)
        self.body = body
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(body)
        self.toggle.toggled.connect(self.set_expanded)
        self.toggle.setChecked(expanded)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.body.setVisible(expanded)
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)


def scrolling_dock(owner: QWidget, body: QVBoxLayout, footer: QVBoxLayout,
                   stretch: bool = True) -> QScrollArea:
    """Put ``body`` in a vertical scroll area filling ``owner`` and ``footer`` under it, always shown;
    ``stretch``: spare height goes below ``body``'s widgets (else to those added with a stretch)."""
    content = QWidget()
    content.setLayout(body)
    if stretch:
        body.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    scroll.setMinimumHeight(60)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(4, 4, 4, 4)
    outer.addWidget(scroll, 1)
    outer.addLayout(footer)
    return scroll
