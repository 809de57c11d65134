"""The web UI (gateway/ui/) over the in-process FakeCluster in open mode: every page renders
(escaped), lists come from the search index, a delete needs the confirmation form's CSRF
value, static assets are served locally, and the template filters format as documented; in
htpasswd mode, the login and its signed session cookie."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from aiohttp.test_utils import TestClient

from cargohold.cluster_auth import format_credential, parse_credential, role_key
from cargohold.config import AuthConfig, Config
from gateway.ui.render import SECURITY_HEADERS, human_bytes, render_text, short_digest, when
from gateway.ui.session import SESSION_COOKIE, HtpasswdSessions, Viewer
from tests.gateway.authkit import basic, start_gateway, write_htpasswd
from tests.gateway.test_search_api import push_image


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


async def test_pages_render_and_delete_needs_the_form(gw: TestClient, fake_cluster) -> None:
    await push_image(gw, fake_cluster, "acme/web", "1.0", "amd64", {"tier": "<b>web</b>"})
    await push_image(gw, fake_cluster, "acme/web", "2.0", "arm64", {})
    resp = await gw.get("/ui/")
    assert resp.status == 200
    assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    text = await resp.text()
    assert "acme/web" in text and "linux/amd64" in text
    text = await (await gw.get("/ui/", params={"q": "nothing-matches"})).text()
    assert 'id="empty"' in text
    text = await (await gw.get("/ui/repository", params={"name": "acme/web"})).text()
    assert 'data-tag="1.0"' in text and 'data-tag="2.0"' in text and "Delete tag" in text
    resp = await gw.get("/ui/image", params={"name": "acme/web", "ref": "1.0"})
    text = await resp.text()
    assert resp.status == 200, text
    assert "linux/amd64" in text and 'id="layers"' in text
    assert "&lt;b&gt;web&lt;/b&gt;" in text and "<b>web</b>" not in text  # escaped
    resp = await gw.get("/ui/image", params={"name": "acme/web", "ref": "nope"})
    assert resp.status == 404 and "MANIFEST_UNKNOWN" in await resp.text()

    confirm = await gw.get("/ui/delete", params={"name": "acme/web", "ref": "1.0"})
    page = await confirm.text()
    assert "Delete the tag" in page
    token = csrf_of(page)
    # Without the form's value (another site's form): refused, nothing deleted.
    resp = await gw.post("/ui/delete", data={"name": "acme/web", "ref": "1.0", "csrf": "x"})
    assert resp.status == 403
    resp = await gw.post(
        "/ui/delete",
        data={"name": "acme/web", "ref": "1.0", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert resp.status == 403
    resp = await gw.post(
        "/ui/delete", data={"name": "acme/web", "ref": "1.0", "csrf": token}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/repository?name=acme/web&deleted=1.0"
    text = await (await gw.get("/ui/repository", params={"name": "acme/web"})).text()
    assert 'data-tag="1.0"' not in text and 'data-tag="2.0"' in text
    assert (await gw.get("/v2/acme/web/manifests/1.0")).status == 404


async def test_admin_pages_and_static_assets(gw: TestClient, fake_cluster) -> None:
    await push_image(gw, fake_cluster, "acme/web", "1.0", "amd64", {})
    # Open mode: everyone is a cluster admin, as on the admin API's reads.
    resp = await gw.get("/ui/activity")
    assert resp.status == 200
    for asset, kind in (("ui.css", "text/css"), ("ui.js", "javascript")):
        resp = await gw.get(f"/ui/static/{asset}")
        assert resp.status == 200 and kind in resp.headers["Content-Type"]
    resp = await gw.get("/ui", allow_redirects=False)
    assert resp.status == 301 and resp.headers["Location"] == "/ui/"


def test_templates_render_without_a_server() -> None:
    who = Viewer("alice", False, False, True, "c")
    page = render_text(
        "repositories.html",
        viewer=who,
        csrf="c",
        now=0,
        title="Repositories",
        params={k: "" for k in ("q", "namespace", "label", "platform", "sort", "cursor")},
        items=[
            {
                "repository": "a/<x>",
                "tags": 2,
                "size": 2048,
                "platforms": ["linux/amd64"],
                "pushed": 0,
                "pulled": None,
            }
        ],
        next_query="cursor=abc",
    )
    assert "a/&lt;x&gt;" in page and 'id="next"' in page and 'id="whoami">alice<' in page
    assert "Cluster" not in page  # not a cluster admin
    assert human_bytes(2048) == "2.0 KiB" and human_bytes(5) == "5 B" and human_bytes(None) == "-"
    assert when(0) == "-" and when(86400) == "1970-01-02 00:00:00"
    assert short_digest("sha256:" + "ab" * 32) == "sha256:abababababab"


async def test_htpasswd_mode_login_and_session(tmp_path: Path, fake_cluster) -> None:
    cfg = Config()
    cfg.cluster.secret = "cluster-secret"
    cfg.auth = AuthConfig(
        mode="htpasswd",
        htpasswd=str(write_htpasswd(tmp_path / "htpasswd", {"alice": "pw-a"})),
        htpasswd_check_seconds=0,
    )
    gw = await start_gateway(cfg, fake_cluster)
    try:
        await push_image(gw, fake_cluster, "acme/web", "1.0", "amd64", {}, basic("alice", "pw-a"))
        text = await (await gw.get("/ui/")).text()
        assert 'id="login-link"' in text and "acme/web" not in text  # anonymous sees nothing
        form = await (await gw.get("/ui/login")).text()
        login = {"username": "alice", "password": "wrong", "csrf": csrf_of(form), "next": "/ui/"}
        resp = await gw.post("/ui/login", data=login, allow_redirects=False)
        assert resp.status == 401 and 'id="login-error"' in await resp.text()
        resp = await gw.post("/ui/login", data={**login, "password": "pw-a"}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/ui/"
        cookie = resp.cookies[SESSION_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        text = await (await gw.get("/ui/")).text()
        assert "alice" in text and "acme/web" in text
        # A gateway holding only its credential (not the secret) accepts it: same key.
        sessions = HtpasswdSessions(role_key("cluster-secret", "gateway"))
        credential = parse_credential(format_credential("cluster-secret", "gateway"))
        assert HtpasswdSessions(credential.key).verify(cookie.value, time.time()) == "alice"
        # Forged or expired: anonymous again.
        user, expires, _mac = cookie.value.split(".")
        for forged in (
            f"{user}.{expires}.{'0' * 64}",
            sessions.sign("alice", time.time() - 1),
            HtpasswdSessions(role_key("another-secret", "gateway")).sign("alice", time.time() + 60),
        ):
            gw.session.cookie_jar.clear()
            gw.session.cookie_jar.update_cookies({SESSION_COOKIE: forged})
            assert "acme/web" not in await (await gw.get("/ui/")).text()
        # A user removed from the file: their session ends.
        gw.session.cookie_jar.clear()
        gw.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie.value})
        assert "acme/web" in await (await gw.get("/ui/")).text()
        write_htpasswd(tmp_path / "htpasswd", {"bob": "pw-b"})
        os.utime(tmp_path / "htpasswd", ns=(1, 1))
        assert "acme/web" not in await (await gw.get("/ui/")).text()
    finally:
        await gw.close()
