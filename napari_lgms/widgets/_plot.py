"""A light live plot of training loss and a validation score (QPainter, no matplotlib).

Two curves over the training step: loss on the left axis (auto-scaled, blue)
and a score on the right axis (0..1, orange dots joined by lines; Dice unless
``score_label`` says otherwise). ``add_loss`` / ``add_dice`` append points and
repaint; ``clear`` starts over.
"""
from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOUR = QColor(80, 160, 255)
DICE_COLOUR = QColor(255, 150, 40)
AXIS_COLOUR = QColor(170, 170, 170)


class TrainingPlot(QWidget):
    """Loss and a validation score against the step, drawn with QPainter."""

    def __init__(self, parent=None, score_label: str = "validation Dice"):
        super().__init__(parent)
        self.score_label = score_label  # what the right axis shows (a score in 0..1)
        self.loss: list[tuple[float, float]] = []
        self.dice: list[tuple[float, float]] = []
        self.total_steps: int | None = None
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def clear(self) -> None:
        self.loss, self.dice, self.total_steps = [], [], None
        self.update()

    def add_loss(self, step: float, value: float) -> None:
        self.loss.append((float(step), float(value)))
        self.update()

    def add_dice(self, step: float, value: float) -> None:
        self.dice.append((float(step), float(value)))
        self.update()

    def _x_range(self) -> tuple[float, float]:
        steps = [s for s, _ in self.loss + self.dice]
        high = max(steps + [float(self.total_steps or 1)])
        return 0.0, max(high, 1.0)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        margin_left, margin_right, margin_top, margin_bottom = 44, 36, 18, 22
        area = QRectF(margin_left, margin_top, max(self.width() - margin_left - margin_right, 10),
                      max(self.height() - margin_top - margin_bottom, 10))
        painter.setPen(QPen(AXIS_COLOUR, 1))
        painter.drawRect(area)
        x_low, x_high = self._x_range()
        loss_values = [v for _, v in self.loss]
        loss_high = max(loss_values) * 1.05 if loss_values else 1.0
        loss_low = min(0.0, min(loss_values)) if loss_values else 0.0

        def point(step, value, low, high):
            x = area.left() + (step - x_low) / (x_high - x_low) * area.width()
            y = area.bottom() - (value - low) / ((high - low) or 1.0) * area.height()
            return QPointF(x, y)

        painter.drawText(QRectF(0, area.top() - 4, margin_left - 4, 14), Qt.AlignRight, f"{loss_high:.2g}")
        painter.drawText(QRectF(0, area.bottom() - 10, margin_left - 4, 14), Qt.AlignRight, f"{loss_low:.2g}")
        painter.drawText(QRectF(area.right() + 4, area.top() - 4, margin_right, 14), Qt.AlignLeft, "1")
        painter.drawText(QRectF(area.right() + 4, area.bottom() - 10, margin_right, 14), Qt.AlignLeft, "0")
        painter.drawText(QRectF(area.left(), area.bottom() + 4, area.width(), 16), Qt.AlignCenter,
                         f"step (0 to {int(x_high)})")
        painter.setPen(QPen(LOSS_COLOUR, 1))
        painter.drawText(QRectF(area.left() + 4, 0, 80, 16), Qt.AlignLeft, "loss")
        painter.setPen(QPen(DICE_COLOUR, 1))
        painter.drawText(QRectF(area.right() - 120, 0, 120, 16), Qt.AlignRight, self.score_label)

        for series, colour, low, high, dots in ((self.loss, LOSS_COLOUR, loss_low, loss_high, False),
                                                (self.dice, DICE_COLOUR, 0.0, 1.0, True)):
            if not series:
                continue
            path = QPainterPath(point(*series[0], low, high))
            for step, value in series[1:]:
                path.lineTo(point(step, value, low, high))
            painter.setPen(QPen(colour, 2))
            painter.drawPath(path)
            if dots:
                painter.setBrush(colour)
                for step, value in series:
                    painter.drawEllipse(point(step, value, low, high), 3, 3)
        painter.end()
