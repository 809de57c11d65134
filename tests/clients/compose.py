"""Drive cluster-compose.yml from tests: up, down, find containers, wait for health.

`ComposeCluster` runs the compose file under its own project name, host port and
network /24 (so it never collides with `make cluster-up`), with `--no-build`: the image
must exist (`make image`; `ensure_image()` runs it when missing). `down()` removes the
containers, the network and the node volumes, after saving every container's log.
Works with `docker compose` (v2) and the standalone `docker-compose` 1.29.
With `tls_dir` set, the cluster runs with mutual TLS on gRPC: `up()` issues the
certificates into that directory (scripts/cluster-certs.sh) and adds
cluster-compose.tls.yml; `status()` then asks as the admin certificate.
The compose cluster starts in token auth with a generated `admin` (cluster-compose.yml):
`admin_password()` reads it from the node that created it, `login()` runs `docker login`
(undone by `down()`), `bearer(scopes)` is an Authorization header for raw HTTP clients.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clients.tools import ToolError, docker, run

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "cluster-compose.yml"
TLS_COMPOSE_FILE = REPO_ROOT / "cluster-compose.tls.yml"
# Where cluster-compose.tls.yml mounts the admin certificate inside the node containers.
ADMIN_TLS = "/etc/cargohold/admin-tls"
NODES = ("node1", "node2", "node3")
GATEWAYS = ("gateway1", "gateway2")


def compose_command() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        try:
            if (
                subprocess.run(
                    [*argv, "version"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                    check=False,
                ).returncode
                == 0
            ):
                return argv
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def ensure_image(image: str) -> None:
    """Build the cargohold image offline (`make image`) unless it exists."""
    if docker("image", "inspect", "-f", "{{.Id}}", image, check=False).startswith("sha256:"):
        return
    run(["make", "-C", str(REPO_ROOT), "image", f"IMAGE={image}"], timeout=900)


@dataclass
class ComposeCluster:
    project: str
    port: int
    net_prefix: str
    image: str = "cargohold:latest"
    log_dir: Path | None = None
    tls_dir: Path | None = None
    compose: list[str] = field(default_factory=lambda: compose_command() or ["docker-compose"])
    _ids: dict[str, str] = field(default_factory=dict)
    _logged_in: bool = False

    # -- lifecycle ---------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CARGOHOLD_IMAGE=self.image, CARGOHOLD_PORT=str(self.port), CARGOHOLD_NET=self.net_prefix
        )
        if self.tls_dir is not None:
            env["CARGOHOLD_TLS_DIR"] = str(self.tls_dir)
        return env

    def _files(self) -> list[str]:
        files = ["-f", str(COMPOSE_FILE)]
        if self.tls_dir is not None:
            files += ["-f", str(TLS_COMPOSE_FILE)]
        return files

    def _compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> str:
        argv = [*self.compose, "-p", self.project, *self._files(), *args]
        proc = subprocess.run(
            argv,
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            cwd=REPO_ROOT,
        )
        out = proc.stdout.decode(errors="replace")
        if check and proc.returncode != 0:
            raise ToolError(argv, proc.returncode, out)
        return out

    def up(self, timeout: float = 180.0) -> None:
        self._ids.clear()
        subprocess.run([str(REPO_ROOT / "scripts" / "cluster-secrets.sh")], check=True)
        if self.tls_dir is not None:
            script = REPO_ROOT / "scripts" / "cluster-certs.sh"
            subprocess.run(
                [str(script), str(self.tls_dir), self.net_prefix, self.image], check=True
            )
        self._compose("up", "-d", "--no-build")
        self.wait_ready(timeout)

    def down(self) -> None:
        if self._logged_in:
            docker("logout", self.registry, check=False)
            self._logged_in = False
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for service in (*NODES, *GATEWAYS, "lb"):
                cid = self.container(service, check=False)
                if cid:
                    text = docker("logs", "--tail", "400", cid, check=False)
                    (self.log_dir / f"{service}.log").write_text(text)
        self._compose("down", "--volumes", "--remove-orphans", "-t", "5", check=False)

    # -- addressing -------------------------------------------------------------------
    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def network(self) -> str:
        return f"{self.project}_cargohold"

    def ip(self, service: str) -> str:
        last = {"node1": 11, "node2": 12, "node3": 13, "gateway1": 21, "gateway2": 22, "lb": 2}[
            service
        ]
        return f"{self.net_prefix}.{last}"

    def container(self, service: str, check: bool = True) -> str:
        """The service's container id (stable across kill, start and restart)."""
        if service in self._ids:
            return self._ids[service]
        lines = self._compose("ps", "-q", service, check=check).strip().splitlines()
        ids = [c for c in lines if len(c) >= 12 and all(ch in "0123456789abcdef" for ch in c)]
        if not ids:
            if check:
                raise LookupError(f"no container for service {service}")
            return ""
        self._ids[service] = ids[0]
        return ids[0]

    # -- health -----------------------------------------------------------------------
    def admin_env(self) -> list[str]:
        """`docker exec` options that make `cargohold admin` in a node present the admin
        certificate (TLS) instead of the node's own; none without TLS."""
        if self.tls_dir is None:
            return []
        return [
            "-e",
            f"CARGOHOLD_CLUSTER_TLS_CERT={ADMIN_TLS}/cert.pem",
            "-e",
            f"CARGOHOLD_CLUSTER_TLS_KEY={ADMIN_TLS}/key.pem",
        ]

    def status(self) -> dict[str, object] | None:
        """`cargohold admin status --json` asked from inside a running node, or None."""
        nodes = ",".join(f"{self.ip(n)}:7001" for n in NODES)
        for service in NODES:
            cid = self.container(service, check=False)
            if not cid or not self.running(cid):
                continue
            out = docker(
                "exec",
                *self.admin_env(),
                cid,
                "cargohold",
                "admin",
                "status",
                "--nodes",
                nodes,
                "--json",
                check=False,
                timeout=30,
            )
            try:
                return json.loads(out)
            except json.JSONDecodeError:
                continue
        return None

    @staticmethod
    def running(cid: str) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", cid, check=False).strip() == "true"

    def health(self, service: str) -> str:
        cid = self.container(service)
        return docker("inspect", "-f", "{{.State.Health.Status}}", cid, check=False).strip()

    def cluster_settled(self) -> bool:
        """A leader, every node answering, all caught up with the commit index."""
        status = self.status()
        if not status:
            return False
        nodes = status.get("nodes")
        if not isinstance(nodes, list) or len(nodes) != len(NODES):
            return False
        if not any(n.get("is_leader") for n in nodes):
            return False
        if any("last_applied" not in n for n in nodes):
            return False
        return all(n["extra"]["raft"]["has_quorum"] for n in nodes)

    def lb_answers(self) -> bool:
        """`/v2/` through the load balancer answers 200, or 401 (token auth)."""
        try:
            with urllib.request.urlopen(f"http://{self.registry}/v2/", timeout=3) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except (OSError, urllib.error.URLError):
            return False

    # -- registry auth ----------------------------------------------------------------
    def admin_password(self, timeout: float = 60.0) -> str:
        """The generated password of `admin`, from `/data/admin-password` of the node whose
        leader created it (node/initial_admin.py)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in NODES:
                cid = self.container(service, check=False)
                if not cid or not self.running(cid):
                    continue
                out = docker("exec", cid, "cat", "/data/admin-password", check=False)
                if out.strip() and "No such file" not in out:
                    return out.strip()
            time.sleep(1)
        raise TimeoutError("no node wrote /data/admin-password")

    def login(self) -> None:
        """`docker login` as admin (the engine's credentials for this host:port)."""
        password = self.admin_password()
        run(
            ["docker", "login", "-u", "admin", "--password-stdin", self.registry],
            input_bytes=password.encode(),
        )
        self._logged_in = True

    def bearer(self, scopes: list[str]) -> dict[str, str]:
        """An Authorization header with an admin token for `scopes` (from the gateways'
        token service, through the load balancer)."""
        basic = base64.b64encode(f"admin:{self.admin_password()}".encode()).decode()
        query = "&".join(["service=cargohold", *(f"scope={s}" for s in scopes)])
        req = urllib.request.Request(
            f"http://{self.registry}/auth/token?{query}",
            headers={"Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            token = json.loads(resp.read())["token"]
        return {"Authorization": f"Bearer {token}"}

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Every service healthy, the Raft group settled and the LB answering."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            states = {s: self.health(s) for s in (*NODES, *GATEWAYS, "lb")}
            if all(v == "healthy" for v in states.values()):
                if self.cluster_settled() and self.lb_answers():
                    return
                last = "services healthy, cluster not settled"
            else:
                last = f"health {states}"
            time.sleep(1)
        raise TimeoutError(f"compose cluster not ready after {timeout}s: {last}")

    def wait_healthy(self, service: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health(service) == "healthy":
                return
            time.sleep(0.5)
        raise TimeoutError(f"{service} not healthy after {timeout}s")

    def leader_service(self) -> str:
        status = self.status() or {}
        for node in status.get("nodes", []):  # type: ignore[union-attr]
            if node.get("is_leader"):
                return {f"{self.ip(n)}:7001": n for n in NODES}[node["address"]]
        raise LookupError("no raft leader")
