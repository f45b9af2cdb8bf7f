"""`remit serve` checks its address before it creates anything: a taken port and a bad host
are each one clear message (only the first suggests another port).

How: real sockets on 127.0.0.1; the taken port is held by a listener of the test's own.
"""

from __future__ import annotations

import socket

import pytest

from remit.errors import InvalidRequest
from remit.server import check_port_free


def test_a_taken_port_suggests_another() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(InvalidRequest) as refused:
            check_port_free("127.0.0.1", port)
    assert refused.value.code == "address_in_use"
    assert refused.value.message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert refused.value.message.endswith("(use --port)")


def test_a_host_that_is_no_address_names_the_host_not_the_port() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_port_free("999.1.1.1", 8080)
    assert refused.value.code == "invalid_address"
    assert refused.value.message.startswith("cannot listen on 999.1.1.1:8080: ")
    assert "--port" not in refused.value.message


def test_a_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port)  # raises nothing
