"""One structured line per request, written in batches.

A `logging.StreamHandler` write per request cost ~40 µs of a ~290 µs request on the hot path
(bench/http.py, py-spy): a record object, a format, a lock and a `write` syscall each time.
Lines are appended to a buffer instead and written with one `os.write` every
`REQUEST_LOG_FLUSH_SECONDS` (or when `REQUEST_LOG_BUFFER_LINES_MAX` lines are waiting), and on
shutdown. A crash may lose the last 50 ms of lines, never a ledger entry.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from typing import Any

import orjson

from remit.limits import REQUEST_LOG_BUFFER_LINES_MAX

REQUEST_LOG_FLUSH_SECONDS = 0.05
REQUEST_LOG_WRITE_WAIT_SECONDS_MAX = 1.0
"""How long a flush waits for a full, non-blocking log stream before it drops the rest."""


class RequestLogWriter:
    """Buffers JSON lines for a file descriptor (stderr by default). Event-loop thread only."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._lines: list[bytes] = []
        self._is_flush_scheduled = False
        self._second = -1
        self._second_text = ""

    def timestamp(self, now_us: int) -> str:
        """RFC 3339 UTC with microseconds; the part up to the second is formatted once per second."""
        second, micros = divmod(now_us, 1_000_000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{micros:06d}Z"

    def write(self, record: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(record) + b"\n")
        if len(self._lines) >= REQUEST_LOG_BUFFER_LINES_MAX:
            self.flush()
        elif not self._is_flush_scheduled:
            self._is_flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(REQUEST_LOG_FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): write at once
                self.flush()

    def flush(self) -> None:
        """Write the waiting lines in chunks of whole lines of at most PIPE_BUF bytes each.

        Several worker processes share one stderr; a pipe keeps a write of up to PIPE_BUF bytes
        in one piece, so their lines never interleave mid-line (a line longer than that goes alone).
        """
        self._is_flush_scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        chunk: list[bytes] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) > select.PIPE_BUF:
                    _write_all(self.fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            _write_all(self.fd, b"".join(chunk))
        except OSError:
            pass  # a closed or full log stream must not fail requests; the ledger is the record


def _write_all(fd: int, data: bytes) -> None:
    """All of `data`, even on a non-blocking stream (O_NONBLOCK is shared by every process on a
    pipe): when it is full, wait up to REQUEST_LOG_WRITE_WAIT_SECONDS_MAX for room."""
    view = memoryview(data)
    deadline = 0.0
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            deadline = deadline or time.monotonic() + REQUEST_LOG_WRITE_WAIT_SECONDS_MAX
            if time.monotonic() >= deadline:
                raise
            select.select([], [fd], [], deadline - time.monotonic())
