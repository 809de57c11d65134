"""The web UI in a real browser: headless Chromium (Debian `chromium` + `chromium-driver`,
driven by selenium) against a real token-mode cluster with pushed images. It lists and
searches repositories, logs in (a wrong password first), opens a repository and an image
(layers, labels, platform, an SBOM referrer), deletes a tag through the confirmation page
and the browser's confirm dialog, and, as a cluster admin, opens the cluster and activity
pages. Screenshots go to build/test-reports/ui/ (next to the JUnit reports) and the test's
tmp dir; docs/ui-*.png are copies of one run. A second test logs in against an htpasswd-mode
cluster of two gateways (a wrong password first) and takes the session cookie from one
gateway to the other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from cluster.shapes import CHUNK, QUIET_ROLES
from cluster.test_auth_roles import admin
from cluster.test_search import image, push, sha
from cluster.token_client import TokenClient

from cargohold_cli.devcluster import LocalCluster
from gateway.auth.keys import generate_signing_key

pytestmark = [pytest.mark.cluster, pytest.mark.clients]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
VENDOR = "org.opencontainers.image.vendor"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def page_left(old: Any) -> Callable[[Any], bool]:
    """A wait condition: the page that held `old` (an element) is gone. Like selenium's
    `staleness_of`, but chromium may answer a check made while the new page replaces the
    old one with "does not belong to the document" instead of a stale-element error: that
    too says the old page is gone."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def left(_driver: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return left


@pytest.fixture
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("chromium or chromium-driver missing: make system-deps")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


async def push_sbom(client: TokenClient, repo: str, subject: bytes) -> None:
    """An SPDX SBOM artifact whose subject is the image `subject` (a referrer)."""
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": repo}).encode()
    empty = b"{}"
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha(empty),
            "size": 2,
        },
        "layers": [{"mediaType": "application/spdx+json", "digest": sha(sbom), "size": len(sbom)}],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(subject),
            "size": len(subject),
        },
        "annotations": {"org.opencontainers.image.created": "2026-12-03T00:00:00Z"},
    }
    body = json.dumps(doc).encode()
    await push(client, repo, sha(body), [empty, sbom], body)


async def test_ui_in_a_real_browser(
    make_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    browser: object,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    key = tmp_path / "key.pem"
    generate_signing_key(str(key))
    auth = {"mode": "token", "signing_key": str(key), "directory_refresh_seconds": 0.5}
    cluster = make_cluster(
        nodes=3, gateways=1, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    await admin(cluster, "users", "add", "boss", "--admin", "--password-stdin", stdin="boss-pw\n")
    await admin(cluster, "users", "add", "dev", "--password-stdin", stdin="dev-pw\n")
    await admin(cluster, "namespaces", "add", "team")
    await admin(cluster, "namespaces", "add", "pub", "public")
    await admin(cluster, "namespaces", "grant", "team", "dev", "maintainer")
    base = cluster.gateway_url
    boss = TokenClient(http, base, "boss", "boss-pw")
    pushed = {}
    for repo, tag, arch, labels in (
        ("team/web", "1.0", "amd64", {VENDOR: "acme", "tier": "web"}),
        ("team/web", "2.0", "arm64", {VENDOR: "acme", "tier": "web"}),
        ("team/api", "latest", "amd64", {VENDOR: "acme"}),
        ("pub/base", "bookworm", "amd64", {VENDOR: "debian"}),
        ("secret/db", "16", "amd64", {}),
    ):
        blobs, body = image(f"{repo}:{tag}", arch, labels)
        await push(boss, repo, tag, blobs, body)
        pushed[(repo, tag)] = body
    await push_sbom(boss, "team/web", pushed[("team/web", "2.0")])

    shots = [ROOT / "build" / "test-reports" / "ui", tmp_path / "screenshots"]
    for d in shots:
        d.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        for d in shots:
            driver.save_screenshot(str(d / f"ui-{name}.png"))

    wait = WebDriverWait(driver, 30)

    def repos_listed() -> list[str]:
        return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")]

    def tag_rows() -> list[str | None]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
        return [r.get_attribute("data-tag") for r in rows]

    def follow(element: WebElement) -> None:
        """Click something that loads another page, and wait until the old one is gone
        (reading the old page's elements meanwhile would find stale ones)."""
        old = driver.find_element(By.TAG_NAME, "html")
        element.click()
        wait.until(page_left(old))

    # Anonymous: only the public namespace.
    driver.get(base + "/ui/")
    assert repos_listed() == ["pub/base"]

    # Log in: a wrong password first, then the right one.
    follow(driver.find_element(By.ID, "login-link"))
    wait.until(ec.presence_of_element_located((By.ID, "login-form")))
    driver.find_element(By.ID, "username").send_keys("dev")
    driver.find_element(By.ID, "password").send_keys("wrong")
    follow(driver.find_element(By.ID, "login-submit"))
    assert (
        "Wrong user name or password"
        in wait.until(ec.presence_of_element_located((By.ID, "login-error"))).text
    )
    driver.find_element(By.ID, "username").send_keys("dev")
    driver.find_element(By.ID, "password").send_keys("dev-pw")
    shot("login")
    follow(driver.find_element(By.ID, "login-submit"))
    assert wait.until(ec.presence_of_element_located((By.ID, "whoami"))).text == "dev"
    cookie = driver.get_cookie("cargohold_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert repos_listed() == ["pub/base", "team/api", "team/web"]
    shot("repositories")

    # Search.
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys("web")
    follow(driver.find_element(By.ID, "search"))
    wait.until(lambda d: repos_listed() == ["team/web"])
    driver.get(base + "/ui/?label=" + VENDOR + "%3Ddebian")
    assert repos_listed() == ["pub/base"]
    driver.get(base + "/ui/?platform=linux/arm64")
    assert repos_listed() == ["team/web"]

    # A repository, then an image.
    follow(driver.find_element(By.CSS_SELECTOR, "a.repo"))
    wait.until(ec.presence_of_element_located((By.ID, "tags")))
    tags = [
        r.get_attribute("data-tag") for r in driver.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
    ]
    assert tags == ["2.0", "1.0"]  # newest push first
    assert "application/spdx+json" in driver.find_element(By.ID, "tags").text
    shot("repository")
    follow(driver.find_element(By.LINK_TEXT, "2.0"))
    wait.until(ec.presence_of_element_located((By.ID, "layers")))
    assert driver.find_element(By.ID, "platform").text == "linux/arm64"
    assert "acme" in driver.find_element(By.ID, "labels").text
    assert "application/spdx+json" in driver.find_element(By.ID, "sboms").text
    assert driver.find_element(By.ID, "digest").text == sha(pushed[("team/web", "2.0")])
    assert "unsigned" in driver.find_element(By.ID, "signature").text
    shot("image")

    # Delete a tag: the confirmation page, then the browser's confirm dialog.
    driver.get(base + "/ui/repository?name=team/web")
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-tag="1.0"]')
    follow(row.find_element(By.CSS_SELECTOR, "a.delete-tag"))
    assert (
        "Delete the tag team/web:1.0"
        in wait.until(ec.presence_of_element_located((By.ID, "confirm-text"))).text
    )
    shot("delete")
    driver.find_element(By.ID, "confirm-delete").click()
    wait.until(ec.alert_is_present()).dismiss()  # "cancel" in the dialog: nothing happens
    assert driver.find_elements(By.ID, "delete-form")
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "confirm-delete").click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(page_left(old))
    assert "Deleted 1.0" in wait.until(ec.presence_of_element_located((By.ID, "deleted"))).text
    tags = [
        r.get_attribute("data-tag") for r in driver.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
    ]
    assert tags == ["2.0"]
    status, _h, _b = await boss.request("GET", "/v2/team/web/manifests/1.0")
    assert status == 404
    status, _h, _b = await boss.request("GET", "/v2/team/web/manifests/2.0")
    assert status == 200
    # dev is no cluster admin: no cluster page.
    driver.get(base + "/ui/cluster")
    assert "only cluster admins" in driver.find_element(By.ID, "error").text

    # Log out, log in as the cluster admin: the cluster and the activity log.
    driver.get(base + "/ui/")
    follow(driver.find_element(By.ID, "logout"))
    follow(wait.until(ec.presence_of_element_located((By.ID, "login-link"))))
    driver.find_element(By.ID, "username").send_keys("boss")
    driver.find_element(By.ID, "password").send_keys("boss-pw")
    follow(driver.find_element(By.ID, "login-submit"))
    assert wait.until(ec.presence_of_element_located((By.ID, "whoami"))).text == "boss"
    assert "secret/db" in repos_listed()
    follow(driver.find_element(By.ID, "nav-cluster"))
    nodes = wait.until(ec.presence_of_element_located((By.ID, "nodes")))
    assert len(nodes.find_elements(By.CSS_SELECTOR, "tbody tr, tr")) >= 4
    assert driver.find_element(By.ID, "leader").text.startswith("n")
    shot("cluster")
    follow(driver.find_element(By.ID, "nav-activity"))
    log = wait.until(ec.presence_of_element_located((By.ID, "activity"))).text
    assert "delete" in log and "team/web" in log and "dev" in log
    shot("activity")
    assert all(
        (shots[0] / f"ui-{n}.png").stat().st_size > 10_000 for n in ("repositories", "image")
    )


async def test_htpasswd_login_in_a_real_browser(
    make_cluster: Callable[..., LocalCluster],
    tmp_path: Path,
    http: aiohttp.ClientSession,
    browser: object,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'alice-pw', bcrypt.gensalt(4)).decode()}\n")
    auth = {"mode": "htpasswd", "htpasswd": str(htpasswd)}
    cluster = make_cluster(
        nodes=3, gateways=2, chunk_size=CHUNK, extra={"node": dict(QUIET_ROLES), "auth": auth}
    )
    one, two = cluster.gateway_urls
    blobs, body = image("acme/web:1.0", "amd64", {VENDOR: "acme"})
    alice = aiohttp.BasicAuth("alice", "alice-pw")  # htpasswd mode: Basic on every request
    for data in blobs:
        url = f"{one}/v2/acme/web/blobs/uploads/?digest={sha(data)}"
        async with http.post(url, data=data, auth=alice) as resp:
            assert resp.status == 201, await resp.text()
    async with http.put(
        f"{one}/v2/acme/web/manifests/1.0",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        auth=alice,
    ) as resp:
        assert resp.status == 201, await resp.text()
    async with http.get(f"{one}/v2/acme/web/manifests/1.0") as resp:
        assert resp.status == 401  # anonymous: nothing

    wait = WebDriverWait(driver, 30)

    def repos_listed() -> list[str]:
        return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")]

    def submit() -> None:
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.ID, "login-submit").click()
        wait.until(page_left(old))

    # Anonymous: the list is empty and offers a login.
    driver.get(one + "/ui/")
    assert repos_listed() == []
    driver.find_element(By.ID, "login-link").click()
    wait.until(ec.presence_of_element_located((By.ID, "login-form")))
    driver.find_element(By.ID, "username").send_keys("alice")
    driver.find_element(By.ID, "password").send_keys("wrong")
    submit()
    error = wait.until(ec.presence_of_element_located((By.ID, "login-error")))
    assert error.is_displayed() and "Wrong user name or password" in error.text
    assert driver.get_cookie("cargohold_session") is None
    driver.find_element(By.ID, "username").send_keys("alice")
    driver.find_element(By.ID, "password").send_keys("alice-pw")
    submit()
    assert wait.until(ec.presence_of_element_located((By.ID, "whoami"))).text == "alice"
    assert repos_listed() == ["acme/web"]
    cookie = driver.get_cookie("cargohold_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The same session on the other gateway (another port: the browser keeps cookies per
    # host, not per port, so it sends it there too): signed with a key every gateway has.
    driver.get(two + "/ui/")
    assert driver.find_element(By.ID, "whoami").text == "alice"
    assert repos_listed() == ["acme/web"]
    driver.find_element(By.CSS_SELECTOR, "a.repo").click()
    rows = wait.until(ec.presence_of_element_located((By.ID, "tags")))
    assert "1.0" in rows.text
    # Without the cookie: anonymous again on both.
    driver.delete_all_cookies()
    for base in (one, two):
        driver.get(base + "/ui/")
        assert repos_listed() == [] and driver.find_elements(By.ID, "login-link")
