"""Progress on stderr that a terminal and a log file can both read: :func:`progress`.

In a terminal a stage shows a rich bar, redrawn in place. Batch jobs (Slurm, ``nohup``, ``2> log``)
write stderr to a file, where a bar that redraws itself in place cannot be read, so there the same
text goes out as plain, flushed lines instead::

    rollout: 120/800 trials (15%) 2.1/s, eta 5m24s, elapsed 57s

one at every tenth of the way, and at least every :data:`PLAIN_EVERY_S` seconds even when nothing
has finished: one propose episode of a small model on a loaded CPU can take many minutes, and a
log that stays silent that long looks like a hung job. One formatter makes the bar's text and the
lines, so both say the same. A stage may have more than one bound (propose stops at ``n`` valid
tasks or at its episode budget, whichever comes first): each is shown, the ETA is the nearer one's.

``sca -q`` turns progress off for every stage at once with :func:`set_enabled`; a stage's own
``enabled`` argument (``show_progress``, which tests pass as False) overrides it. Warnings
(:meth:`Progress.warn`) are printed either way. Standard library only at import: rich loads when a
bar is drawn, so ``sca --help`` stays fast.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

#: a plain line at least this often (seconds), whether or not anything finished since the last one
PLAIN_EVERY_S = 30.0
#: and one each time a bound passes another 1/PLAIN_STEPS of its total (10%, 20%, ...)
PLAIN_STEPS = 10
#: how often (seconds) the background thread looks whether a plain line is due
_HEARTBEAT_POLL_S = 1.0

_enabled = True


def set_enabled(on: bool) -> None:
    """Turn progress on or off for every stage run from now on (``sca -q``: off)."""
    global _enabled
    _enabled = bool(on)


def is_enabled() -> bool:
    return _enabled


def choose_mode(enabled: bool | None, stream: Any) -> str:
    """``"off"``, ``"bar"`` (a terminal) or ``"lines"`` (anything else: a file, a pipe)."""
    if enabled is None:
        enabled = _enabled
    if not enabled:
        return "off"
    isatty = getattr(stream, "isatty", None)
    try:
        return "bar" if isatty is not None and isatty() else "lines"
    except (ValueError, OSError):  # a closed stream
        return "lines"


def format_duration(seconds: float) -> str:
    """``45s``, ``5m24s``, ``2h13m``: short enough for a line, precise enough for an ETA."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_rate(per_second: float) -> str:
    """``2.1/s``, or per minute or hour when under one a second (an episode every 751 s is ``4.8/h``)."""
    for unit, scale in (("s", 1), ("min", 60), ("h", 3600)):
        value = per_second * scale
        if value >= 1 or unit == "h":
            return f"{value:.2g}/{unit}" if value < 10 else f"{value:.0f}/{unit}"
    raise AssertionError("unreachable")


class _Bound:
    __slots__ = ("unit", "total", "done", "start")

    def __init__(self, unit: str, total: int):
        self.unit, self.total, self.done, self.start = unit, total, 0, 0

    def step(self) -> int:
        """How many tenths (PLAIN_STEPS) of the way this bound is."""
        return min(PLAIN_STEPS, self.done * PLAIN_STEPS // self.total) if self.total > 0 else 0


class Progress:
    """The progress of one stage run. Call it (``advance(n=1)``) as each item of the first bound
    finishes, or :meth:`update` the bounds by name; :meth:`warn` prints a line above it.

    `bounds`: ``unit -> total``, the first the main one (its count is what ``advance`` adds to);
    the run ends when any of them is reached, so the bar's fraction is the largest of theirs and the
    ETA the smallest. `extra(progress)`: more text for the line (propose's yield). `clock`: seconds,
    ``time.monotonic`` unless a test injects its own.
    """

    def __init__(self, description: str, bounds: dict[str, int], *, mode: str, stream: TextIO,
                 clock: Callable[[], float] = time.monotonic,
                 extra: Callable[[Progress], str | None] | None = None):
        if not bounds:
            raise ValueError("progress needs at least one bound")
        self.description = description
        self.bounds = {unit: _Bound(unit, int(total)) for unit, total in bounds.items()}
        self.main = next(iter(self.bounds.values()))
        self.mode = mode
        self.stream = stream
        self.clock = clock
        self.extra = extra
        self.started = clock()
        self.lines_written = 0
        self._lock = threading.RLock()
        self._last_line_at = self.started
        self._last_steps = self._steps()
        self._last_text: str | None = None
        self._bar: Any = None  # the rich Progress, in "bar" mode
        self._bar_task: Any = None

    # -- counting ------------------------------------------------------------------------------------

    def __call__(self, n: int = 1) -> None:
        self.advance(n)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.main.done += n
            self._changed()

    def update(self, **done: int) -> None:
        """Set the counts of the bounds named (``update(episodes=12, valid=1)``)."""
        with self._lock:
            for unit, value in done.items():
                self.bounds[unit].done = int(value)
            self._changed()

    def resumed(self, **done: int) -> None:
        """Counts an earlier run already made: shown, but left out of the rate."""
        with self._lock:
            for unit, value in done.items():
                b = self.bounds[unit]
                b.done = b.start = int(value)
            self._last_steps = self._steps()
            self._refresh_bar()

    def done(self, unit: str | None = None) -> int:
        return (self.bounds[unit] if unit else self.main).done

    # -- what is shown -------------------------------------------------------------------------------

    def rate(self, unit: str | None = None) -> float:
        """Items of `unit` (the main bound's) finished per second in this run (resumed ones left out)."""
        b = self.bounds[unit] if unit else self.main
        elapsed = self.clock() - self.started
        return (b.done - b.start) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds to the nearest bound at the rates so far; None before anything has finished."""
        etas = []
        for b in self.bounds.values():
            if b.done >= b.total:
                return 0.0
            r = self.rate(b.unit)
            if r > 0:
                etas.append((b.total - b.done) / r)
        return min(etas) if etas else None

    def fraction(self) -> float:
        return max(min(1.0, b.done / b.total) if b.total > 0 else 1.0 for b in self.bounds.values())

    def status(self, elapsed: bool = True) -> str:
        """The text after the description: each bound's count, the main rate, any extra, the ETA."""
        parts = []
        for i, b in enumerate(self.bounds.values()):
            pct = int(100 * b.done / b.total) if b.total > 0 else 100
            text = f"{b.done}/{b.total} {b.unit} ({pct}%)"
            rate = self.rate() if i == 0 else 0.0
            if rate > 0:
                text += f" {format_rate(rate)}"
            parts.append(text)
        more = self.extra(self) if self.extra else None
        if more:
            parts.append(more)
        eta = self.eta()
        parts.append(f"eta {format_duration(eta) if eta is not None else '?'}")
        if elapsed:
            parts.append(f"elapsed {format_duration(self.clock() - self.started)}")
        return ", ".join(parts)

    def line(self) -> str:
        return f"{self.description}: {self.status()}"

    def warn(self, message: str) -> None:
        """One plain ``warning:`` line on the stream, whatever the mode (above the bar in a terminal)."""
        text = f"warning: {self.description}: {message}"
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self._write(text)

    # -- when it is shown ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Write a plain line if one is due by the clock, or redraw the bar's rate and ETA (the heartbeat
        thread calls this)."""
        with self._lock:
            if self.mode == "lines" and self.clock() - self._last_line_at >= PLAIN_EVERY_S:
                self._line_now()
            elif self.mode == "bar":
                self._refresh_bar()

    def finish(self) -> None:
        """The last line, unless the last one written already said it all."""
        with self._lock:
            if self.mode == "lines" and self._state_text() != self._last_text:
                self._line_now()

    def _steps(self) -> tuple[int, ...]:
        return tuple(b.step() for b in self.bounds.values())

    def _state_text(self) -> str:
        return "|".join(f"{b.done}" for b in self.bounds.values())

    def _changed(self) -> None:
        if self.mode == "lines":
            steps = self._steps()
            if any(s > last for s, last in zip(steps, self._last_steps)) or \
                    self.clock() - self._last_line_at >= PLAIN_EVERY_S:
                self._line_now()
        elif self.mode == "bar":
            self._refresh_bar()

    def _line_now(self) -> None:
        self._write(self.line())
        self.lines_written += 1
        self._last_line_at = self.clock()
        self._last_steps = self._steps()
        self._last_text = self._state_text()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # stderr closed under us: progress is not worth failing a run for
            pass

    def _refresh_bar(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar_task, completed=self.fraction(), status=self.status(elapsed=False))


@contextmanager
def progress(total: int, description: str, enabled: bool | None = None, *, unit: str = "records",
             bounds: dict[str, int] | None = None, extra: Callable[[Progress], str | None] | None = None,
             stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
             heartbeat: bool = True) -> Iterator[Progress]:
    """The progress of a stage on stderr (`stream`): yields a :class:`Progress`, called as ``advance(n=1)``.

    `total` `unit` (``800 trials``) is the main bound, `bounds` more of them (``{"valid": 800}``);
    `enabled`: None follows :func:`set_enabled`. A bar in a terminal, plain lines elsewhere, nothing
    when off or when `total` is 0. `heartbeat`: the thread that writes a line when PLAIN_EVERY_S
    pass with nothing finished, or keeps the bar's rate and ETA current (tests that drive a fake
    `clock` call :meth:`Progress.tick` instead).
    """
    stream = sys.stderr if stream is None else stream
    mode = choose_mode(enabled, stream) if total > 0 else "off"
    p = Progress(description, {unit: total, **(bounds or {})}, mode=mode, stream=stream, clock=clock, extra=extra)
    stop = threading.Event()
    beat = None
    if mode != "off" and heartbeat:
        def run() -> None:
            while not stop.wait(_HEARTBEAT_POLL_S):
                p.tick()

        beat = threading.Thread(target=run, name=f"progress {description}", daemon=True)
        beat.start()
    try:
        if mode == "bar":
            yield from _with_bar(p)
        else:
            yield p
    finally:
        stop.set()
        if beat is not None:
            beat.join()
    p.finish()  # after a normal end only: an error's one line stays the last thing printed


def _with_bar(p: Progress) -> Iterator[Progress]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    console = Console(file=p.stream, highlight=False)
    with RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                      console=console, transient=False) as bar:
        with p._lock:  # the heartbeat thread redraws it too
            p._bar, p._bar_task = bar, bar.add_task(p.description, total=1.0, status=p.status(elapsed=False))
            p._refresh_bar()
        try:
            yield p
        finally:
            with p._lock:
                p._refresh_bar()
                p._bar = None
