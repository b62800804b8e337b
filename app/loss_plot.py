"""The live loss plot: raw loss, a smoothed curve, and the learning rate on a second axis.

Its colours come from the window's palette (background, axes, text) and app.colours (curves),
and are set again when the palette changes, so the plot reads in light and dark themes."""

from __future__ import annotations

import bisect
import importlib
import math
import threading
import time

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QVBoxLayout, QWidget

from app.colours import CURVE, SECOND_CURVE, tone_colour

SMOOTHING = 0.9  # exponential moving average, as TensorBoard shows it (debiased)
REDRAW_MS = 250
EMPTY_RANGE = (0.0, 1.0)  # what both axes show before a run's first point


def lr_axis_range(lrs: list[float]) -> tuple[float, float]:
    """The learning-rate axis for these rates (never negative): 0 to a little above the
    highest. A constant rate gets 0 .. twice its value, so its line sits in the middle;
    pyqtgraph's own fit of a flat line is a hair-thin band around it that read as
    -400 ... 400 (x0.001)."""
    if not lrs or max(lrs) <= 0:
        return EMPTY_RANGE
    high = max(lrs)
    return 0.0, (2 * high if min(lrs) == high else 1.1 * high)


def preload_in_background() -> threading.Thread:
    """Import pyqtgraph (0.6 s) on a worker thread once the window is up, so neither start-up
    nor the first loss point of a run waits for it. Only modules are loaded there; every
    widget is still made on the GUI thread."""
    thread = threading.Thread(target=importlib.import_module, args=("pyqtgraph",),
                              name="preload-pyqtgraph", daemon=True)
    thread.start()
    return thread


class LossPlot(QWidget):
    """pyqtgraph is imported on first show or draw, so it costs nothing at window start-up."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.lrs: list[float] = []
        # the held-out images' loss (trainer.validation): its own series, step -> loss
        self.validation: dict[int, float] = {}
        self._ema = 0.0
        self.plot = None
        self._drawn_at = 0.0
        self._later = QTimer(self)
        self._later.setSingleShot(True)
        self._later.timeout.connect(self._draw)
        self.log_scale = QCheckBox("log scale")
        self.log_scale.setToolTip("Show the loss on a logarithmic axis (small changes stay "
                                  "visible late in training).")
        self.log_scale.toggled.connect(self._set_log)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.setMinimumHeight(200)
        options = QHBoxLayout()
        options.addWidget(self.log_scale)
        options.addStretch()
        self._layout.addLayout(options)

    def _build(self) -> None:
        if self.plot is not None:
            return
        import pyqtgraph as pg  # here, not at the top: keeps start-up fast
        self.plot = pg.PlotWidget()
        self.plot.setMinimumHeight(180)
        # no grid: pyqtgraph blends its grid lines into every repaint, which doubles the cost
        # of a frame (19 -> 9 ms CPU at 1280x740) while a run streams in
        item = self.plot.getPlotItem()
        item.setLabel("bottom", "step")
        item.setLabel("left", "loss")
        item.getAxis("left").enableAutoSIPrefix(False)  # 0.12, not 120 (x0.001)
        item.addLegend(offset=(-10, 10))
        self.raw_curve = item.plot(name="loss")
        self.smooth_curve = item.plot(name="smoothed")
        self.validation_curve = item.plot(name="validation (held-out images)", symbol="o",
                                          symbolSize=6)
        self.lr_view = pg.ViewBox()
        item.showAxis("right")
        item.scene().addItem(self.lr_view)
        item.getAxis("right").linkToView(self.lr_view)
        item.getAxis("right").setLabel("learning rate")
        # rates are 1e-6 .. 1e-3: an SI multiplier such as "(x1e-05)" only hides the value
        item.getAxis("right").enableAutoSIPrefix(False)
        self.lr_view.setXLink(item)
        self.lr_curve = pg.PlotDataItem(name="learning rate")
        self.lr_view.addItem(self.lr_curve)
        item.legend.addItem(self.lr_curve, "learning rate")
        item.vb.sigResized.connect(self._sync_views)
        item.setLogMode(y=self.log_scale.isChecked())
        self._apply_palette()
        self._layout.insertWidget(0, self.plot, 1)

    def _apply_palette(self) -> None:
        import pyqtgraph as pg

        palette = self.palette()
        text = palette.color(QPalette.Text)
        self.plot.setBackground(palette.color(QPalette.Base))
        item = self.plot.getPlotItem()
        for side in ("left", "bottom", "right"):
            item.getAxis(side).setPen(text)
            item.getAxis(side).setTextPen(text)
        item.legend.setLabelTextColor(text)
        curve, second = tone_colour(CURVE, palette), tone_colour(SECOND_CURVE, palette)
        faint = pg.mkColor(curve)
        faint.setAlpha(110)
        self.raw_curve.setPen(pg.mkPen(faint, width=1))
        self.smooth_curve.setPen(pg.mkPen(curve, width=2))
        self.validation_curve.setPen(pg.mkPen(second, width=2))
        self.validation_curve.setSymbolPen(pg.mkPen(second))
        self.validation_curve.setSymbolBrush(pg.mkBrush(second))
        self.lr_curve.setPen(pg.mkPen(second, width=1, style=Qt.DashLine))

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if self.plot is not None and event.type() in (QEvent.PaletteChange,
                                                      QEvent.ApplicationPaletteChange):
            self._apply_palette()
        super().changeEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._build()
        self.redraw()
        super().showEvent(event)

    def _sync_views(self) -> None:
        self.lr_view.setGeometry(self.plot.getPlotItem().vb.sceneBoundingRect())
        self.lr_view.linkedViewChanged(self.plot.getPlotItem().vb, self.lr_view.XAxis)

    def _set_log(self, on: bool) -> None:
        if self.plot is not None:
            self.plot.getPlotItem().setLogMode(y=on)

    def clear(self) -> None:
        """Forget the points and the axes: the next run starts on fresh, self-fitting axes, not
        on the last run's ranges (or a range the user zoomed to)."""
        self.steps, self.losses, self.smoothed, self.lrs = [], [], [], []
        self.validation = {}
        self._ema = 0.0
        if self.plot is not None:
            view = self.plot.getPlotItem().vb  # the rate axis is set from the points at each draw
            view.setRange(xRange=EMPTY_RANGE, yRange=EMPTY_RANGE, padding=0)
            view.enableAutoRange()
            self.redraw()

    def keep_until(self, step: int) -> None:
        """Drop the points after `step`. A resumed run trains from its checkpoint's step again,
        so the steps the earlier run made after it are not part of the final weights' curve."""
        kept = bisect.bisect_right(self.steps, step)
        del self.steps[kept:], self.losses[kept:], self.smoothed[kept:], self.lrs[kept:]
        self.validation = {s: v for s, v in self.validation.items() if s <= step}
        # the moving average as it stood after the last kept point (undo the debiasing)
        self._ema = self.smoothed[-1] * (1 - SMOOTHING ** kept) if kept else 0.0

    def add(self, step: int, loss: float, lr: float) -> None:
        """One point; a step at or before the last one shown (a resumed run) replaces the
        points from that step on."""
        if not math.isfinite(loss):
            return
        if self.steps and step <= self.steps[-1]:
            self.keep_until(step - 1)
        self.steps.append(step)
        self.losses.append(loss)
        self.lrs.append(lr)
        self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
        self.smoothed.append(self._ema / (1 - SMOOTHING ** len(self.losses)))

    def add_validation(self, step: int, loss: float) -> None:
        """One validation point (the same step again, as on a resume, replaces it)."""
        if math.isfinite(loss):
            self.validation[step] = loss

    def redraw(self) -> None:
        """Push the data to the curves now, or REDRAW_MS after the last time: a run's ten
        ticks a second would otherwise repaint the plot ten times a second."""
        self._build()
        wait_ms = REDRAW_MS - 1000 * (time.monotonic() - self._drawn_at)
        if wait_ms <= 0:
            self._draw()
        elif not self._later.isActive():
            self._later.start(int(wait_ms) + 1)

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        self.raw_curve.setData(self.steps, self.losses)
        self.smooth_curve.setData(self.steps, self.smoothed)
        self.lr_curve.setData(self.steps, self.lrs)
        shown = sorted(self.validation)
        self.validation_curve.setData(shown, [self.validation[s] for s in shown])
        low, high = lr_axis_range(self.lrs)
        self.lr_view.setYRange(low, high, padding=0)
        self._sync_views()
