"""Progress of long steps (calibration, conversion, verification, evaluation).

The library reports through the standard ``logging`` logger ``"mvit3"`` and
prints nothing itself: a program that wants the messages adds a handler
(``logging.basicConfig(level=logging.INFO)`` is enough). The ``mvit3`` command
renders them with :class:`ProgressHandler`: a stage is one line; a counted
loop is a bar redrawn in place on a terminal, and one line when it ends
elsewhere (logs, CI).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Optional

logger = logging.getLogger("mvit3")
logger.addHandler(logging.NullHandler())


def stage(message: str) -> None:
    """One step of a longer job (``"converting to int8"``)."""
    logger.info(message)


def counted(items: Iterable, total: int, what: str) -> Iterator:
    """Yield ``items`` while reporting ``what: i/total`` (``total`` = the expected count)."""
    start = time.time()
    done = 0
    for item in items:
        yield item
        done += 1
        logger.info("%s", what, extra={"progress": (done, total, time.time() - start)})


class ProgressHandler(logging.Handler):
    """Render the ``"mvit3"`` logger's records on a stream (the CLI's choice)."""

    def __init__(self, stream=None, width: int = 30):
        super().__init__(logging.INFO)
        self._stream = stream  # None: sys.stdout at the time of each record
        self.width = width
        self._open_bar: Optional[str] = None

    @property
    def stream(self):
        return self._stream or sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "progress", None)
        if progress is None:
            self._close_bar()
            self.stream.write(f"  {record.getMessage()}\n")
        else:
            self._draw(record.getMessage(), *progress)
        self.stream.flush()

    def _draw(self, what: str, done: int, total: int, seconds: float) -> None:
        finished = total and done >= total
        tty = getattr(self.stream, "isatty", lambda: False)()
        if not (tty or finished):
            return
        filled = int(self.width * min(done, total) / total) if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        line = f"  {what} [{bar}] {done}/{total} ({seconds:.1f} s)"
        self.stream.write(("\r" if tty else "") + line + ("\n" if finished else ""))
        self._open_bar = None if finished else what

    def _close_bar(self) -> None:
        if self._open_bar is not None:
            self.stream.write("\n")
            self._open_bar = None
