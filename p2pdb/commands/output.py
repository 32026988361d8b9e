"""A status line: rewritten in place on a terminal, plain periodic lines in a log or pipe."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["StatusLine"]


class StatusLine:
    """Shows the latest status text on ``stream``.

    On a terminal every :meth:`show` rewrites one line in place (cut to the terminal's
    width). Anywhere else (a log file, a pipe) a text is written as a plain line at most
    every ``interval`` seconds, and only when it changed, so logs stay readable.
    :meth:`finish` always writes the last text as a complete line.
    """

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 10.0, tty: bool | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.tty = self.stream.isatty() if tty is None else tty
        self._shown = ""  # the text last written
        self._pending = ""  # the text to write (pipe mode)
        self._last_write = float("-inf")

    def show(self, text: str) -> None:
        """Display ``text`` (now on a terminal; in a pipe when the interval has passed)."""
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self.stream.flush()
            self._shown = text
            return
        self._pending = text
        now = time.monotonic()
        if text != self._shown and now - self._last_write >= self.interval:
            self._write_line(text)
            self._last_write = now

    def message(self, text: str) -> None:
        """Write ``text`` as a line of its own (on a terminal, above the status line)."""
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
            if self._shown:
                self.show(self._shown)
            self.stream.flush()
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self, text: str | None = None) -> None:
        """End the status: write the last text as a complete line."""
        final = text if text is not None else (self._pending or self._shown)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + final[:width] + "\x1b[K\n")
            self.stream.flush()
        elif final:
            self._write_line(final)

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = text
