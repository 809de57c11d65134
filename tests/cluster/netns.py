"""Test hosts in network namespaces, so chaos tests can cut a node off the cluster network.

Each host is a namespace `<prefix>-<i>` joined to the root namespace by a point-to-point veth
pair (`10.213.<net>.<4i+1>` on the root side, `.<4i+2>` inside). Traffic between two hosts is
routed through the root namespace (the FORWARD chain), while a gateway running in the root
namespace talks to a host directly (INPUT/OUTPUT). So:

- `partition(i)`: drop everything forwarded to or from host i: it loses its Raft peers but the
  gateways still reach it (the "minority side that still gets client traffic" case);
- `isolate(i)`: take its link down: nobody reaches it;
- `heal(i)`: undo either.

Only addresses of namespaces created here are ever used. Needs root and iproute2/iptables;
`available()` says whether this machine allows it. Docker sets the FORWARD policy to DROP, so
`setup()` inserts ACCEPT rules for our own interfaces and `teardown()` removes every rule and
namespace it made.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess

_serial = itertools.count()


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"):
        return False
    probe = f"chprobe{os.getpid() % 10000}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "delete", probe)
        _run("iptables", "-L", "FORWARD", "-n")
        return True
    except (subprocess.CalledProcessError, OSError):
        return False


class NetnsLab:
    """A set of namespaced test hosts reachable from the root namespace."""

    def __init__(self, count: int, net: int | None = None) -> None:
        self.count = count
        # Unique per lab, also within one process: the kernel tears a deleted namespace's
        # devices down asynchronously, so reusing a name at once can fail.
        serial = next(_serial)
        self.tag = f"ch{os.getpid() % 100000}{serial}"
        # One /24 per lab; the pid and the serial keep labs and parallel runs apart.
        self.net = net if net is not None else 1 + (os.getpid() + 7 * serial) % 250
        self._rules: list[list[str]] = []
        self._cut: dict[int, list[list[str]]] = {}
        self.ready = False

    def namespace(self, i: int) -> str:
        return f"{self.tag}-{i}"

    def _veth(self, i: int) -> str:
        return f"{self.tag}v{i}"

    def root_ip(self, i: int) -> str:
        return f"10.213.{self.net}.{4 * i + 1}"

    def host_ip(self, i: int) -> str:
        return f"10.213.{self.net}.{4 * i + 2}"

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(i)]

    def setup(self) -> NetnsLab:
        _run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i in range(self.count):
            ns, veth = self.namespace(i), self._veth(i)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "addr", "add", f"{self.root_ip(i)}/30", "dev", veth)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _run(
                "ip",
                "netns",
                "exec",
                ns,
                "ip",
                "addr",
                "add",
                f"{self.host_ip(i)}/30",
                "dev",
                "eth0",
            )
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", self.root_ip(i))
            for direction in ("-i", "-o"):
                rule = ["FORWARD", direction, veth, "-j", "ACCEPT"]
                _run("iptables", "-I", *rule)
                self._rules.append(rule)
        self.ready = True
        return self

    def partition(self, i: int) -> None:
        """Cut host i off from the other hosts; the root namespace still reaches it."""
        if i in self._cut:
            return
        rules = [["FORWARD", d, self._veth(i), "-j", "DROP"] for d in ("-i", "-o")]
        for rule in rules:
            _run("iptables", "-I", *rule)
        self._cut[i] = rules

    def isolate(self, i: int) -> None:
        """Take host i's link down: unreachable from everywhere."""
        _run("ip", "link", "set", self._veth(i), "down")

    def heal(self, i: int) -> None:
        for rule in self._cut.pop(i, []):
            _run("iptables", "-D", *rule, check=False)
        _run("ip", "link", "set", self._veth(i), "up", check=False)

    def teardown(self) -> None:
        for i in list(self._cut):
            self.heal(i)
        for rule in self._rules:
            _run("iptables", "-D", *rule, check=False)
        self._rules.clear()
        for i in range(self.count):
            with contextlib.suppress(OSError):
                # Deleting our end first removes the pair at once (namespace teardown is
                # asynchronous in the kernel).
                _run("ip", "link", "delete", self._veth(i), check=False)
                _run("ip", "netns", "delete", self.namespace(i), check=False)
        self.ready = False

    def __enter__(self) -> NetnsLab:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()
