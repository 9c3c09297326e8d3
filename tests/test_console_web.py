"""The officer's console in a real browser (Debian's chromium driven by Playwright) against the real Console,
a real mosquitto configured from the demo fleet and a real node (`edge-node run`) replaying the demo's photos.

One world for the module (the node runs three times: deployment 1 needing one reviewer, deployment 2 needing
two, then a quiet run that only takes the commands waiting for it); the tests run in file order and each
takes up where the one before left the world. The screenshots in docs/console/ are taken here.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from consoleworld import ALERTING, PASSWORD, QUIET, ConsoleServer, NodeWorld
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqttworld import Peer, free_port, wait_for

from edge.audit import AuditLog
from edge.demo.run import CAMERA, DEVICE
from edge.events.ids import uuid7
from edge.events.messages import MATCH_EVENT, SCHEMA, sign_message
from edge.events.topics import DeviceTopics
from edge.identity import load_identity
from edge.trust.times import format_time, now
from edge.vault import STORAGE_PURPOSE, EvidenceGoneError, EvidenceVault
from provisioning.console.reviews import Standing, sign_review
from provisioning.console.service import EvidenceGoneError as ConsoleEvidenceGone

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "console"
D1, D2 = "stadium-d1", "stadium-d2-two-reviewers"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync",
               "--autoplay-policy=no-user-gesture-required"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                "(/usr/bin/chromium; `scripts/bootstrap --dev` installs it)")


@dataclass
class Web:
    node: NodeWorld
    server: ConsoleServer
    browser: Any
    d1: list[str] = field(default_factory=list)  # event ids of deployment 1's alerts, oldest first
    d2: list[str] = field(default_factory=list)
    forged: list[str] = field(default_factory=list)

    def login(self, name: str) -> Any:
        """A fresh browser context (its own cookies) logged in as `name`; returns the page on the queue."""
        ctx = self.browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(f"{self.server.url}/login")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.server.url}/")
        return page

    def node_audit(self) -> list[Any]:
        return list(AuditLog.in_state_dir(self.node.site.node_dir, now).entries())

    def node_vault(self) -> EvidenceVault:
        node = self.node.site.node_dir
        return EvidenceVault.in_state_dir(node, load_identity(node).storage_key(STORAGE_PURPOSE), now)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("console-web")
    node = NodeWorld.create(root)
    server: ConsoleServer | None = None
    try:
        node.deploy(D1, reviewers_required=1)
        server = ConsoleServer(node, root / "console", free_port())
        for name, role in (("pc-4711", "reviewer"), ("pc-0815", "reviewer"), ("sgt-0042", "supervisor"),
                           ("admin-1", "admin"), ("pc-9999", "reviewer")):
            server.add_account(name, role)
        server.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
            try:
                yield Web(node, server, browser)
            finally:
                browser.close()
    finally:
        if server is not None:
            server.stop()
        node.stop()


def request(web: Web, method: str, path: str, body: str | None = None,
            cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTPS request from outside any browser (no cookies unless given)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", web.server.port, context=ctx, timeout=10)
    headers = {"content-type": "application/x-www-form-urlencoded"} if body is not None else {}
    if cookie:
        headers["cookie"] = cookie
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read() if method != "GET" or path != "/events" or resp.status != 200 else b""
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    conn.close()
    return out


def until(page: Any, expression: str, timeout: float = 20.0) -> bool:
    """Polls a page expression from here (page.evaluate goes over the devtools protocol; wait_for_function would
    eval a string inside the page, which the console's CSP rightly refuses)."""
    return wait_for(lambda: bool(page.evaluate(expression)), timeout)


def cookie_of(page: Any) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())


def forgeries(web: Web) -> list[bytes]:
    """A match event signed by a key that is not the device's, and a real device signature over an event
    whose score was changed after signing: both published on the device's own topic with its certificate."""
    node = web.node.site.node_dir
    identity = load_identity(node)
    t = now()

    def body() -> dict[str, Any]:
        return {"type": MATCH_EVENT, "schema": SCHEMA, "event_id": uuid7(), "seq": 1, "device_id": DEVICE,
                "camera_id": CAMERA, "deployment_id": D1, "ts": format_time(t), "expires": format_time(t),
                "track_id": "t-forged", "entry_id": "WL-2026-0001", "score": 0.99, "threshold": 0.94,
                "margin": 0.2, "model": {"id": "x", "sha256": "0" * 64}, "shard": {"id": D1, "version": 1},
                "frames_agreeing": 4, "evidence": None, "context": None}

    forged = body()
    forged["expires"] = format_time(t.replace(year=t.year + 1))
    tampered = {**body(), "expires": format_time(t.replace(year=t.year + 1)), "score": 0.5}
    signed = json.loads(sign_message(tampered, identity.signing_key))
    signed["score"] = 0.99  # after signing
    web.forged = [forged["event_id"], tampered["event_id"]]
    return [sign_message(forged, Ed25519PrivateKey.generate()), json.dumps(signed).encode()]


def test_an_alert_appears_live_with_its_crops_beside_the_reference_photo(web: Web) -> None:
    page = web.login("pc-4711")
    page.wait_for_selector("#live-state.on")
    page.evaluate("window.__notReloaded = true")
    # forged and tampered events reach the broker first, on the device's topic with its certificate
    tls = web.node.site.node_dir / "identity"
    peer = Peer(web.node.broker, DEVICE, cert=(tls / "tls.crt", tls / "tls.key")).connect()
    for payload in forgeries(web):
        info = peer.client.publish(DeviceTopics(DEVICE).match, payload, qos=1)
        info.wait_for_publish(10)
    peer.close()
    web.node.run_node(ALERTING)  # deployment 1: two alerts
    assert until(page, "document.querySelectorAll('tr.alert-row').length === 2")
    assert page.evaluate("window.__notReloaded") is True  # the rows came over the event stream
    assert page.is_visible("#live-banner") and "New alert" in page.inner_text("#live-banner")
    assert int(page.evaluate("document.body.dataset.beeps || '0'")) >= 1  # the audible cue was played
    rows = page.eval_on_selector_all("tr.alert-row", "rs => rs.map(r => r.dataset.event)")
    queue = [a.event_id for a in web.server.console.queue()]
    assert rows == queue and len(rows) == 2  # newest first, as the console keeps them
    web.d1 = list(reversed(rows))
    assert not set(web.forged) & set(queue)  # never an alert
    page.screenshot(path=str(SHOTS / "queue.png"), full_page=True)

    page.click(f"tr[data-event='{web.d1[0]}'] a.button")
    page.wait_for_url(f"**/alert/{web.d1[0]}")
    assert until(page, "[...document.images].every(i => i.dataset.decoded)")
    sizes = page.eval_on_selector_all("img", "is => is.map(i => [i.id || i.className, i.naturalWidth, "
                                      "i.naturalHeight])")
    assert {s[0] for s in sizes} == {"face", "context", "reference-photo"}
    assert all(w > 0 and h > 0 for _, w, h in sizes), sizes
    text = page.inner_text("main")
    for expected in ("Barack Obama", "WL-2026-0001", D1, DEVICE, CAMERA, f"verified by {DEVICE} key",
                     "Margin over runner-up", "left before retention deletes it", "0 of 1 required"):
        assert expected in text, expected
    storage = page.evaluate("""async () => ({local: localStorage.length, session: sessionStorage.length,
        idb: (await indexedDB.databases()).length, caches: (await caches.keys()).length})""")
    assert storage == {"local": 0, "session": 0, "idb": 0, "caches": 0}
    page.screenshot(path=str(SHOTS / "alert.png"), full_page=True)
    views = [(v["event_id"], v["account"]) for v in web.server.journal("view")]
    assert (web.d1[0], "pc-4711") in views  # on the console's record: who viewed which alert
    cookie = cookie_of(page)
    for forged in web.forged:
        assert request(web, "GET", f"/alert/{forged}", cookie=cookie)[0] == 404
    assert len(web.server.journal("event-rejected")) >= 2

    page.goto(f"{web.server.url}/fleet")
    page.wait_for_selector(f"tr.device[data-device='{DEVICE}']")
    assert "stadium-d1" in page.inner_text(f"tr.device[data-device='{DEVICE}']")
    page.screenshot(path=str(SHOTS / "fleet.png"), full_page=True)
    page.context.close()


def test_every_route_and_image_refuses_the_anonymous_and_a_post_needs_the_csrf_token(web: Web) -> None:
    event = web.d1[0]
    for page in ("/", "/fleet", "/report", "/admin", f"/alert/{event}"):
        code, headers, _ = request(web, "GET", page)
        assert code == 303 and headers["location"] == "/login", page
    for url in ("/events", f"/alert/{event}/face.jpg", f"/alert/{event}/context.jpg",
                "/reference/WL-2026-0001/0"):
        assert request(web, "GET", url)[0] == 401, url
    assert request(web, "POST", f"/alert/{event}/decide", "outcome=confirmed&note=x")[0] == 401
    assert request(web, "POST", "/logout", "")[0] == 401

    code, headers, _ = request(web, "GET", "/login")
    assert code == 200
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    cookie = headers["set-cookie"]
    assert cookie.startswith("__Host-") and all(a in cookie for a in ("Secure", "HttpOnly", "SameSite=strict"))

    page = web.login("pc-0815")
    session = next(c for c in page.context.cookies() if c["name"].startswith("__Host-console-session"))
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    cookie = cookie_of(page)
    code, headers, data = request(web, "GET", f"/alert/{event}/face.jpg", cookie=cookie)
    assert code == 200 and data[:2] == b"\xff\xd8" and headers["cache-control"] == "no-store"
    assert request(web, "GET", "/static/console.js")[2].startswith(b"//")  # assets need no session
    # a state change without the session's CSRF token (or with another's) is refused, and changes nothing
    for body in ("outcome=confirmed&note=forged", "outcome=confirmed&note=forged&csrf=not-the-token"):
        assert request(web, "POST", f"/alert/{event}/decide", body, cookie=cookie)[0] == 403
    assert request(web, "POST", "/logout", "", cookie=cookie)[0] == 403
    assert web.server.console.alert(event).decisions == ()
    # roles: a reviewer sees neither the report nor the accounts
    assert request(web, "GET", "/report", cookie=cookie)[0] == 403
    assert request(web, "GET", "/admin", cookie=cookie)[0] == 403
    page.context.close()


def decide(page: Any, url: str, event: str, outcome: str, note: str) -> None:
    page.goto(f"{url}/alert/{event}")
    page.fill("textarea[name=note]", note)
    page.click(f"button[value={outcome}]")
    page.wait_for_load_state()


def test_confirm_and_dismiss_reach_the_node_and_a_dismissal_destroys_the_evidence(web: Web) -> None:
    confirmed, dismissed = web.d1
    watcher = web.login("sgt-0042")  # another officer's open queue
    watcher.wait_for_selector("#live-state.on")
    assert until(watcher, "document.querySelectorAll('tr.alert-row').length === 2")
    page = web.login("pc-4711")
    decide(page, web.server.url, confirmed, "confirmed", "same scar above the left eye")
    assert page.text_content("#alert-status") == "confirmed"
    decide(page, web.server.url, dismissed, "dismissed", "different person: older, no beard")
    assert page.text_content("#alert-status") == "dismissed"
    console = web.server.console
    with pytest.raises(ConsoleEvidenceGone):
        console.evidence(dismissed, "face")
    cookie = cookie_of(page)
    assert request(web, "GET", f"/alert/{dismissed}/face.jpg", cookie=cookie)[0] == 404
    assert request(web, "GET", f"/alert/{confirmed}/face.jpg", cookie=cookie)[0] == 200
    assert page.is_hidden("#decide")  # a decided alert takes no more decisions
    # decided alerts leave the other officer's queue without a reload
    assert until(watcher, "document.querySelectorAll('tr.alert-row').length === 0")
    assert "No open alerts" in watcher.inner_text("#queue-rows")
    watcher.context.close()
    # both review commands are out (the node is stopped: they wait in its session at the broker)
    assert wait_for(lambda: all(console.alert(e).node_answer for e in web.d1), 30)

    web.node.deploy(D2, reviewers_required=2)
    page.goto(f"{web.server.url}/")
    page.wait_for_selector("#live-state.on")
    web.node.run_node(ALERTING)  # takes the two reviews, then raises deployment 2's two alerts
    assert until(page, "document.querySelectorAll('tr.alert-row').length === 2")
    web.d2 = list(reversed(page.eval_on_selector_all("tr.alert-row", "rs => rs.map(r => r.dataset.event)")))
    assert not set(web.d2) & set(web.d1)
    assert wait_for(lambda: [console.alert(e).node_answer for e in web.d1] == ["recorded", "recorded"], 30)
    reviews = {e.data["event_id"]: e.data for e in web.node_audit() if e.kind == "review"}
    assert reviews[confirmed]["outcome"] == "confirmed" and reviews[confirmed]["reviewers"] == ["pc-4711"]
    assert reviews[dismissed]["outcome"] == "dismissed" and reviews[dismissed]["reviewers"] == ["pc-4711"]
    vault = web.node_vault()
    try:
        for event in web.d1:  # a reviewed alert's evidence leaves the node's vault
            with pytest.raises(EvidenceGoneError):
                vault.read(event)
        assert all(vault.read(e).face for e in web.d2)
    finally:
        vault.close()
    page.context.close()


def test_two_reviewers_must_agree_and_the_node_refuses_a_one_reviewer_command(web: Web) -> None:
    two, one = web.d2
    first = web.login("pc-4711")
    decide(first, web.server.url, two, "confirmed", "matches the reference")
    assert first.text_content("#alert-status") == "open" and "1 of 2 required" in first.inner_text("main")
    decide(first, web.server.url, two, "confirmed", "again, to force it through")
    assert "Refused" in first.inner_text("#refused")  # one account cannot be both reviewers
    console = web.server.console
    assert [d.reviewer for d in console.alert(two).decisions] == ["pc-4711"] and console.alert(two).outcome is None
    second = web.login("pc-0815")
    decide(second, web.server.url, two, "confirmed", "agree: same person")
    assert second.text_content("#alert-status") == "confirmed"
    # a console that sent one reviewer's review of a two-reviewer deployment: the node refuses it
    stored = console.store.get(one)
    lone = sign_review(console.fleet, console.review_key, stored, Standing("confirmed", ("pc-4711",)))
    console.sender.send(lone)
    assert wait_for(lambda: bool(console.alert(two).node_answer), 30)
    web.node.run_node(QUIET)  # no alerts: takes the waiting commands
    records = web.node_audit()
    reviews = {e.data["event_id"]: e.data for e in records if e.kind == "review"}
    assert reviews[two]["reviewers"] == ["pc-4711", "pc-0815"] and reviews[two]["outcome"] == "confirmed"
    assert one not in reviews
    refused = [e.data for e in records if e.kind == "command" and e.data.get("command_id") == lone.command_id]
    assert refused and refused[0]["ok"] is False and refused[0]["code"] == "TooFewReviewersError"
    vault = web.node_vault()
    try:
        assert vault.read(one).face  # the refused review deleted nothing
    finally:
        vault.close()
    assert wait_for(lambda: console.alert(two).node_answer == "recorded", 30)
    first.context.close()
    second.context.close()


def test_repeated_failed_logins_lock_the_account(web: Web) -> None:
    ctx = web.browser.new_context(ignore_https_errors=True)
    page = ctx.new_page()
    for _ in range(5):
        page.goto(f"{web.server.url}/login")
        page.fill("input[name=name]", "pc-9999")
        page.fill("input[name=password]", "not the password")
        page.click("button[type=submit]")
        assert "Wrong name or password" in page.inner_text("#login-error")
    page.goto(f"{web.server.url}/login")
    page.fill("input[name=name]", "pc-9999")
    page.fill("input[name=password]", PASSWORD)  # the right one, too late
    page.click("button[type=submit]")
    assert "locked" in page.inner_text("#login-error") and page.url.endswith("/login")
    failed = [r for r in web.server.journal("login-failed") if r.get("account") == "pc-9999"]
    assert len(failed) == 6
    assert ("pc-4711" in {r.get("account") for r in web.server.journal("login")})
    ctx.close()


def test_a_session_ends_when_idle_too_long_at_its_absolute_age_and_at_logout() -> None:
    from datetime import UTC, datetime, timedelta

    from provisioning.console.sessions import NoSessionError, SessionExpiredError, SessionLimits, SessionStore

    clock = [datetime(2026, 5, 2, 18, 0, tzinfo=UTC)]
    store = SessionStore(lambda: clock[0], SessionLimits(idle=timedelta(minutes=15), absolute=timedelta(hours=10)))
    token, session = store.create("pc-4711", "reviewer")
    assert session.csrf and session.csrf != token and len(token) >= 43
    for _ in range(45):  # used every 14 minutes: alive until the absolute age (10 h)
        clock[0] += timedelta(minutes=14)
        if clock[0] - session.created > timedelta(hours=10):
            with pytest.raises(SessionExpiredError):
                store.use(token)
            break
        assert store.use(token).account == "pc-4711"
    else:
        pytest.fail("the absolute timeout never ended the session")
    with pytest.raises(NoSessionError):  # and it is gone, not merely refused once
        store.use(token)
    token, _ = store.create("pc-4711", "reviewer")
    clock[0] += timedelta(minutes=15, seconds=1)
    with pytest.raises(SessionExpiredError):
        store.use(token)
    token, _ = store.create("pc-0815", "reviewer")
    assert store.end(token) is not None
    with pytest.raises(NoSessionError):
        store.use(token)
    with pytest.raises(NoSessionError):
        store.use("a-token-this-server-never-issued")


def test_a_supervisor_sees_the_deployment_report_and_an_admin_the_accounts(web: Web) -> None:
    supervisor = web.login("sgt-0042")
    supervisor.goto(f"{web.server.url}/report")
    cells = supervisor.eval_on_selector_all("table.report tr",
                                            "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    rows = {r[0]: r[1:5] for r in cells[1:]}
    assert rows[D1] == ["2", "1", "1", "0"] and rows[D2] == ["2", "1", "0", "1"]  # alerts, conf., dism., open
    supervisor.context.close()
    admin = web.login("admin-1")
    admin.goto(f"{web.server.url}/admin")
    listed = admin.inner_text("table.accounts")
    assert all(name in listed for name in ("pc-4711", "pc-0815", "sgt-0042", "admin-1", "pc-9999"))
    admin.goto(f"{web.server.url}/alert/{web.d2[1]}")
    assert admin.is_hidden("#decide")  # an admin decides nothing
    admin.context.close()
