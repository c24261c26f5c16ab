"""Progress on a stream that is not a terminal (a log file, a pipe): plain lines, no redraw debris.

tqdm redraws a bar in place with carriage returns, which a file keeps as one ever-growing line.
:class:`PlainProgress` wraps such a stream: each bar's redraws become one plain line at most every
``every`` seconds per bar (and its last state when the bar closes); other text passes unchanged.
"""
from __future__ import annotations

import re
import time
from typing import Callable, TextIO

# Terminal control sequences (tqdm moves the cursor up, "ESC[A", to redraw a nested bar in place).
CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainProgress:
    def __init__(self, stream: TextIO, every: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.clock = stream, every, clock
        self._last_shown: dict[str, float] = {}  # bar description -> when its last line was written
        self._pending: str | None = None  # the newest redraw not written yet
        self._in_bar = False  # the last text written was a redraw

    def write(self, text: str) -> int:
        if not text:  # tqdm writes "" between moves; it must not end the bar's state
            return 0
        plain = CONTROL.sub("", text)
        if plain != text and not plain.strip():  # only cursor movement (and its newline): nothing to keep
            return len(text)
        text, length = plain, len(text)
        if "\r" in text:
            for part in text.split("\r"):
                part = part.rstrip()
                if part:  # blank parts are a bar clearing itself
                    self._redraw(part)
            self._in_bar = True
        elif text == "\n" and self._in_bar:  # a bar closing (leave=True): its final state, if not shown
            if self._pending is not None:
                self._show(self._pending)
            self._in_bar = False
        else:
            self._in_bar, self._pending = False, None
            self.stream.write(text)
        return length

    def _redraw(self, line: str) -> None:
        key = line.split(":", 1)[0]
        shown = self._last_shown.get(key)
        if shown is None or self.clock() - shown >= self.every:
            self._show(line)
        else:
            self._pending = line

    def _show(self, line: str) -> None:
        self._last_shown[line.split(":", 1)[0]] = self.clock()
        self._pending = None
        self.stream.write(line + "\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # encoding, fileno...: the wrapped stream's
        return getattr(self.stream, name)
