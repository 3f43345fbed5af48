"""Progress of long work in the terminal: per stage, units (and samples or steps) with rate and ETA.

On a terminal a live rich display, drawn on the console of Prefect's log handler so log records
print above it; elsewhere (pipes, files, a Prefect worker, TERM=dumb) plain log lines. The text of a
line is `progress_text`, the same in both. Drawing is reporting: it never fails the work.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from flows import common  # attribute access at call time: flows.common imports this module

PLAIN_EVERY_S = 30.0  # plain lines for samples/steps: at most one per meter this often (and the last)


def duration_text(seconds: float) -> str:
    """h:mm:ss, e.g. 0:01:05."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rate_text(rate: float, what: str) -> str:
    """Per second, or per minute / hour for slow work: `2.5 units/s`, `12.0 steps/min`."""
    for per, scale in (("s", 1), ("min", 60), ("h", 3600)):
        if rate * scale >= 1 or per == "h":
            return f"{rate * scale:.1f} {what}/{per}"
    raise AssertionError("unreachable")


def progress_text(done: int, total: int, what: str, elapsed: float, start: int = 0, extra: str = "") -> str:
    """`3/4 units, 1.5 units/s, ETA 0:00:01`; `start` counts what was done before (not in the rate);
    at the end `done in 0:00:03`; before the first one `ETA ?`."""
    head = f"{done}/{total} {what}" + (f" ({extra})" if extra else "")
    if done >= total:
        return f"{head}, done in {duration_text(elapsed)}"
    rate = (done - start) / elapsed if elapsed > 0 and done > start else 0.0
    if rate <= 0:
        return f"{head}, ETA ?"
    return f"{head}, {rate_text(rate, what)}, ETA {duration_text((total - done) / rate)}"


def log_console() -> Console | None:
    """The rich console Prefect's log handler prints records on (None before Prefect set logging up)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                     if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                return handler.console
    return None


def live_console() -> Console | None:
    """The console to draw a live display on, or None for plain lines: stdout must be a terminal,
    TERM not dumb, not a run started by a Prefect worker, and the log console a terminal too."""
    if not sys.stdout.isatty() or os.environ.get("TERM", "") in ("", "dumb") or os.environ.get("PREFECT__FLOW_RUN_ID"):
        return None
    console = log_console()
    return console if console is not None and console.is_terminal else None


class _SafeProgress(Progress):
    """Drawing happens in rich's refresh thread and inside every log print (the console's render hook):
    a failure there draws nothing rather than raising into the work or the log handler."""

    def get_renderable(self) -> RenderableType:
        try:
            return super().get_renderable()
        except Exception:
            return Text("")


class _Display:
    """One live display for the process (stages of `vora run --parallel` share it: rich allows one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.progress: Progress | None = None
        self.users = 0

    def add(self, console: Console, description: str, total: int) -> int:
        with self.lock:
            if self.progress is None:
                # explicit styles: Prefect's console has a theme without rich's defaults (bar.back, ...)
                bar = BarColumn(bar_width=24, style="grey50", complete_style="cyan", finished_style="green",
                                pulse_style="cyan")
                self.progress = _SafeProgress(TextColumn("{task.description}"), bar, TextColumn("{task.fields[text]}"),
                                              console=console, transient=False, refresh_per_second=2)
                self.progress.start()
            self.users += 1
            return self.progress.add_task(description, total=total, text="")

    def update(self, task: int, completed: int, text: str) -> None:
        if self.progress is not None:
            self.progress.update(task, completed=completed, text=text)

    def remove(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users <= 0 and self.progress is not None:
                self.progress.stop()
                self.progress, self.users = None, 0


_DISPLAY = _Display()


@dataclass
class Meter:
    """One counted thing of one stage (its units, its samples, its steps): a bar or plain log lines."""

    label: str
    what: str
    total: int
    start: int = 0
    plain_every_s: float = 0.0  # 0: a plain line at every update
    clock: Callable[[], float] = time.monotonic
    task: int | None = field(default=None, init=False)
    started: float = field(default=0.0, init=False)
    done: int = field(default=0, init=False)
    last_line: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        self.started, self.done = self.clock(), self.start
        if (console := common.best_effort("progress display", live_console)) is not None:
            self.task = common.best_effort("progress display", _DISPLAY.add, console, f"{self.label} {self.what}",
                                           self.total)
        if self.task is not None:
            self.update(self.start)

    def update(self, done: int, extra: str = "") -> None:
        self.done = done
        common.best_effort("progress display", self._show, extra)

    def _show(self, extra: str) -> None:
        now = self.clock()
        text = progress_text(self.done, self.total, self.what, now - self.started, self.start, extra)
        if self.task is not None:
            _DISPLAY.update(self.task, self.done, text)
        elif self.done >= self.total or now - self.last_line >= self.plain_every_s:
            self.last_line = now
            common.run_logger().info("%s: %s", self.label, text)

    def close(self) -> None:
        if self.task is not None:
            self.task = None
            common.best_effort("progress display", _DISPLAY.remove)


_METERS: dict[tuple[str, str], Meter] = {}  # (stage, what) → meter, for runners in task threads
_METERS_LOCK = threading.Lock()


def open_meter(label: str, what: str, total: int, start: int = 0, plain_every_s: float = 0.0) -> Meter:
    """A meter for `what` of stage `label` (replacing, and closing, one of the same name)."""
    meter = Meter(label, what, total, start, plain_every_s)
    with _METERS_LOCK:
        old, _METERS[(label, what)] = _METERS.get((label, what)), meter
    if old is not None:
        old.close()
    return meter


def close_meter(meter: Meter) -> None:
    meter.close()
    with _METERS_LOCK:
        if _METERS.get((meter.label, meter.what)) is meter:
            del _METERS[(meter.label, meter.what)]


def close_stage(label: str) -> None:
    with _METERS_LOCK:
        meters = [m for k, m in _METERS.items() if k[0] == label]
    for meter in meters:
        close_meter(meter)


def advance(label: str, what: str, done: int, total: int) -> None:
    """Move the `what` meter of stage `label` to `done` of `total`, opening it at the first call
    (samples/steps reported from inside a unit); it closes when `done` reaches `total`."""
    with _METERS_LOCK:
        meter = _METERS.get((label, what))
    if meter is None or meter.total != total:
        meter = open_meter(label, what, total, start=done, plain_every_s=PLAIN_EVERY_S)
    meter.update(done)
    if done >= total:
        close_meter(meter)
