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
import time
from typing import Any

import orjson

from remit.limits import REQUEST_LOG_BUFFER_LINES_MAX

REQUEST_LOG_FLUSH_SECONDS = 0.05


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
        self._is_flush_scheduled = False
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # a closed or full log stream must not fail requests; the ledger is the record
