"""Running the external client tools (docker, skopeo) from tests, with readable failures.

Every call has a timeout and, on failure, raises `ToolError` carrying the command line,
exit code and output, so a failed test says exactly what the client printed. `Podman` is
podman with a private store and auth file under a test's directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 300.0


class ToolError(RuntimeError):
    """A client command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}:\n{output[-4000:]}")
        self.returncode = returncode
        self.output = output


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> str:
    """Run a command, return its stdout+stderr as text; raise ToolError on failure."""
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        input=input_bytes,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout.decode(errors="replace")
    if check and proc.returncode != 0:
        raise ToolError(argv, proc.returncode, output)
    return output


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def docker_answers() -> bool:
    """True when a Docker engine accepts commands."""
    if not have("docker"):
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def docker(*args: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check)


def skopeo(*args: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> str:
    return run(["skopeo", *args], timeout=timeout, check=check)


class Podman:
    """podman with private storage (vfs: works inside containers) and auth file under
    `root`; its runroot is a short temporary directory (podman wants at most 50
    characters), removed by `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "auth.json").write_text("{}")
        self.runroot = Path(tempfile.mkdtemp(prefix="chpod-"))

    def __call__(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        base = [
            "podman",
            "--root", str(self.root / "storage"),
            "--runroot", str(self.runroot),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
        ]  # fmt: skip
        return run(
            ["env", f"REGISTRY_AUTH_FILE={self.root / 'auth.json'}", *base, *args],
            input_bytes=stdin,
            check=check,
        )

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)
