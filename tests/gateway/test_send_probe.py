"""What loopback clients get (gateway/send_probe.py): the probe really sends both ways over a
loopback connection and reports the sending thread's CPU for each; `auto` follows its
answer, `on`/`off` do not probe; clients on other addresses always get sendfile."""

from __future__ import annotations

import math

import pytest

from gateway import send_probe
from gateway.send_probe import LoopbackSends, SendCosts, is_loopback, measure_loopback_sends

MiB = 1024 * 1024


def test_the_probe_sends_both_ways_and_measures_each() -> None:
    costs = measure_loopback_sends(round_bytes=8 * MiB, rounds=1)
    for value in (costs.sendfile, costs.write):
        assert math.isfinite(value) and value > 0


def test_writes_must_save_a_twentieth_to_replace_sendfile() -> None:
    assert SendCosts(sendfile=0.45, write=0.30).sendfile_pays() is False
    assert SendCosts(sendfile=0.45, write=0.44).sendfile_pays() is True  # a near tie
    assert SendCosts(sendfile=0.30, write=0.45).sendfile_pays() is True


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        (("127.0.0.1", 5000), True),
        (("127.3.4.5", 1), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 1, 0, 0), True),  # a dual-stack listener's IPv4 client
        (("::ffff:10.0.0.7", 1, 0, 0), False),
        (("10.0.0.7", 5000), False),
        (("fe80::1%eth0", 1, 0, 2), False),
        (None, False),
        ("/run/sock", False),
    ],
)
def test_loopback_peers(peer: object, loopback: bool) -> None:
    assert is_loopback(peer) is loopback


async def test_on_and_off_do_not_probe_and_others_always_get_sendfile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> SendCosts:
        raise AssertionError("no probe expected")

    monkeypatch.setattr(send_probe, "measure_loopback_sends", refuse)
    here, there = ("127.0.0.1", 1), ("192.0.2.1", 1)
    for mode, loopback in (("on", True), ("off", False)):
        sends = LoopbackSends(mode)
        sends.start()
        assert sends.use_sendfile(here) is loopback and sends.use_sendfile(there) is True
        await sends.stop()


@pytest.mark.parametrize(
    ("costs", "sendfile"), [(SendCosts(0.45, 0.30), False), (SendCosts(0.30, 0.45), True)]
)
async def test_auto_follows_the_probe(
    monkeypatch: pytest.MonkeyPatch, costs: SendCosts, sendfile: bool
) -> None:
    monkeypatch.setattr(send_probe, "measure_loopback_sends", lambda: costs)
    sends = LoopbackSends("auto")
    assert sends.use_sendfile(("127.0.0.1", 1)) is True  # until the probe has answered
    sends.start()
    assert sends._task is not None
    await sends._task
    assert sends.costs == costs
    assert sends.use_sendfile(("127.0.0.1", 1)) is sendfile
    assert sends.use_sendfile(("192.0.2.1", 1)) is True
    await sends.stop()


async def test_a_probe_that_fails_leaves_sendfile(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> SendCosts:
        raise OSError("no loopback here")

    monkeypatch.setattr(send_probe, "measure_loopback_sends", broken)
    sends = LoopbackSends("auto")
    sends.start()
    assert sends._task is not None
    await sends._task
    assert sends.costs is None and sends.use_sendfile(("127.0.0.1", 1)) is True
