"""The request log writes every line it was given, as JSON, in order, with RFC 3339 times.

How: a writer on a pipe gets lines from inside an event loop (buffered, flushed by its timer or
when full) and from outside one (written at once); the pipe's bytes are parsed back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time

import orjson

from remit.api.requestlog import REQUEST_LOG_FLUSH_SECONDS, RequestLogWriter
from remit.limits import REQUEST_LOG_BUFFER_LINES_MAX


def read_lines(fd: int) -> list[dict[str, object]]:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return [orjson.loads(line) for line in data.splitlines()]


def test_lines_are_buffered_then_flushed_in_order() -> None:
    read_end, write_end = os.pipe()
    writer = RequestLogWriter(write_end)

    async def scenario() -> tuple[int, int]:
        for index in range(10):
            writer.write({"n": index})
        waiting = len(read_lines(read_end))
        await asyncio.sleep(REQUEST_LOG_FLUSH_SECONDS * 3)
        return waiting, len(read_lines(read_end))

    try:
        waiting, flushed = asyncio.run(scenario())
        assert waiting == 0, "lines wait for the flush timer"
        assert flushed == 10
    finally:
        os.close(write_end)
    os.close(read_end)


def test_a_full_buffer_and_a_caller_without_a_loop_write_at_once() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, True)
    writer = RequestLogWriter(write_end)
    try:
        writer.write({"outside": "a loop"})
        assert read_lines(read_end) == [{"outside": "a loop"}]

        async def fill() -> list[dict[str, object]]:
            for index in range(REQUEST_LOG_BUFFER_LINES_MAX):
                writer.write({"n": index})
            return read_lines(read_end)

        written = asyncio.run(fill())
        assert [line["n"] for line in written] == list(range(REQUEST_LOG_BUFFER_LINES_MAX))
    finally:
        os.close(write_end)
        os.close(read_end)


def test_timestamps_are_rfc3339_utc_with_microseconds() -> None:
    writer = RequestLogWriter(2)
    for us in (0, 1_795_444_094_002_035, 1_795_444_094_999_999, 1_795_444_095_000_000):
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S")
        assert writer.timestamp(us) == f"{expected}.{us % 1_000_000:06d}Z"


WRITER_SCRIPT = """
import sys
from remit.api.requestlog import RequestLogWriter
writer, name = RequestLogWriter(int(sys.argv[1])), sys.argv[2]
for batch in range(30):
    for n in range(100):
        writer.write({"writer": name, "n": batch * 100 + n, "path": "/v1/authorize/" + "p" * 150})
    writer.flush()
"""


def test_two_processes_on_one_pipe_never_split_each_others_lines() -> None:
    """`remit serve --workers` shares one stderr, perhaps non-blocking; the reader is slow, so the
    pipe is full and writes come back short or refused: no line may be lost or split."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(write_end), name], pass_fds=(write_end,))
        for name in ("a", "b")
    ]
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 512):  # slowly: the pipe stays full, writers block mid-flush
        data += chunk
        time.sleep(0.0002)
    os.close(read_end)
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    records = [orjson.loads(line) for line in data.splitlines()]  # a split line would not parse
    for name in ("a", "b"):
        assert [r["n"] for r in records if r["writer"] == name] == list(range(3000))
