"""cargohold/ports.py: a taken port is refused at once, naming the listening process."""

from __future__ import annotations

import os
import socket

import pytest

from cargohold.errors import AddressInUse
from cargohold.ports import ensure_bindable, listener_pid, listens


def test_a_listener_is_named_and_a_free_port_passes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listens(os.getpid(), port) and listener_pid(port) == os.getpid()
        with pytest.raises(AddressInUse) as taken:
            ensure_bindable(f"127.0.0.1:{port}", "HTTP", linger=30)  # a listener: no waiting
        assert f"127.0.0.1:{port} (HTTP)" in str(taken.value)
        assert f"pid {os.getpid()}" in str(taken.value)
    ensure_bindable(f"127.0.0.1:{port}", "HTTP")
    assert not listens(os.getpid(), port)
