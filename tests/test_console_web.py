"""The officer's console in a real browser (Debian's chromium driven by Playwright) against the real Console,
a real mosquitto configured from the demo fleet and a real node (`edge-node run`) replaying the demo's photos.

One world for the module (the node runs three times: deployment 1 needing one reviewer, deployment 2 needing
two, then a quiet run that only takes the commands waiting for it); the tests run in file order and each
takes up where the one before left the world. The screenshots in docs/console/ are taken here.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
from provisioning.console.app import AlertFeed, ConsoleWeb, WebSettings
from provisioning.console.fleetview import DeviceView
from provisioning.console.reviews import Standing, sign_review
from provisioning.console.security import (
    IMAGE_CSP,
    AddressThrottle,
    LoginBusyError,
    LoginGate,
    LoginLimits,
    LoginThrottledError,
)
from provisioning.console.service import EvidenceGoneError as ConsoleEvidenceGone
from provisioning.reports import AuditSource

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "console"
T = TypeVar("T")
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

    def login(self, name: str, lands: str = "/") -> Any:
        """A fresh browser context (its own cookies) logged in as `name`; returns the page where it lands (the
        queue; an admin's: the accounts)."""
        ctx = self.browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto(f"{self.server.url}/login")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.server.url}{lands}")
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
        # every login here comes from 127.0.0.1: a larger allowance than one officer's (the limit has its own
        # test); the stream's session re-check every second rather than 5 (a disabled account's stream ends sooner)
        settings = WebSettings(logins=LoginLimits(burst=100), heartbeat_s=1.0)
        server = ConsoleServer(node, root / "console", free_port(), settings)
        for name, role in (("pc-4711", "reviewer"), ("pc-0815", "reviewer"), ("sgt-0042", "supervisor"),
                           ("admin-1", "admin"), ("pc-9999", "reviewer"), ("pc-1234", "reviewer")):
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


def connect(web: Web) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", web.server.port, context=ctx, timeout=10)


def request(web: Web, method: str, path: str, body: str | bytes | Iterator[bytes] | None = None,
            cookie: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTPS request from outside any browser (no cookies unless given; an iterator body goes chunked)."""
    conn = connect(web)
    headers = dict(headers or {})
    if body is not None:
        headers["content-type"] = "application/x-www-form-urlencoded"
    if cookie:
        headers["cookie"] = cookie
    conn.request(method, path, body=body, headers=headers, encode_chunked=body is not None and
                 not isinstance(body, str | bytes))
    resp = conn.getresponse()
    data = resp.read() if method != "GET" or path != "/events" or resp.status != 200 else b""
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    conn.close()
    return out


def stream(web: Web, cookie: str, until_event: str, last_id: str | None = None,
           query: str = "") -> list[tuple[str | None, str, str]]:
    """Reads /events as a page would (with Last-Event-ID when given) until an event of kind `until_event`
    arrives: the (id, kind, data) of every event before it, and it."""
    conn = connect(web)
    headers = {"cookie": cookie, **({"last-event-id": last_id} if last_id else {})}
    conn.request("GET", f"/events{query}", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    events: list[tuple[str | None, str, str]] = []
    ident: str | None = None
    kind = data = ""
    try:
        while True:
            line = resp.fp.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and kind:
                events.append((ident, kind, data))
                if kind == until_event:
                    return events
                ident, kind, data = None, "", ""
    finally:
        conn.close()


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own (Playwright's sync API keeps a loop running in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


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
    views = [(v.get("event_id") or v.get("entry_id"), v["account"], v.get("part"))
             for v in web.server.journal("view")]
    assert (web.d1[0], "pc-4711", None) in views  # on the console's record: who viewed which alert
    # and every face served: both crops and the reference photo, with the part
    assert {(web.d1[0], "pc-4711", "face"), (web.d1[0], "pc-4711", "context"),
            (web.server.console.alert(web.d1[0]).entry_id, "pc-4711", "reference")} <= set(views)
    cookie = cookie_of(page)
    for url, name in ((f"/alert/{web.d1[0]}/face.jpg", "face.jpg"), (f"/alert/{web.d1[0]}/context.jpg",
                                                                      "context.jpg")):
        code, headers, data = request(web, "GET", url, cookie=cookie)
        assert code == 200 and data[:3] == b"\xff\xd8\xff" and headers["content-type"] == "image/jpeg"
        assert headers["content-security-policy"] == IMAGE_CSP == "sandbox; default-src 'none'"
        assert headers["content-disposition"] == f"inline; filename={name}"
    entry = web.server.console.alert(web.d1[0]).entry_id
    code, headers, _ = request(web, "GET", f"/reference/{entry}/0", cookie=cookie)
    assert code == 200 and headers["content-type"] in ("image/jpeg", "image/png")
    assert headers["content-security-policy"] == IMAGE_CSP
    assert headers["content-disposition"] in ("inline; filename=reference.jpg", "inline; filename=reference.png")
    # a page that reconnects (or was still loading) gets what it missed: numbered events, replayed
    feed = web.server.web.feed
    missed = stream(web, cookie, "alert", last_id=f"{feed.epoch}.0")
    assert [k for _, k, _ in missed] == ["alert"] and missed[0][0] == f"{feed.epoch}.1"
    replayed = stream(web, cookie, "alert", query=f"?since={feed.epoch}.1")  # the page's own position
    assert replayed[0][0] == f"{feed.epoch}.2" and json.loads(replayed[0][2])["id"] in web.d1
    assert {json.loads(missed[0][2])["id"], json.loads(replayed[0][2])["id"]} == set(web.d1)
    # an id from another process (a restart) cannot be resumed: the page is told to load the queue afresh
    assert [k for _, k, _ in stream(web, cookie, "reset", last_id="0badf00d.1")] == ["reset"]
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
    # a request body is capped, declared or sent chunked: refused before anything reads it
    big = "csrf=x&name=pc-0815&password=" + "p" * 70_000
    code, headers, _ = request(web, "POST", "/login", big)
    assert code == 413 and headers["cache-control"] == "no-store"
    assert request(web, "POST", "/login", iter([b"name=pc-0815&password="] + [b"p" * 8192] * 10))[0] == 413
    assert request(web, "POST", f"/alert/{event}/decide", big, cookie=cookie)[0] == 413
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


def row_text(page: Any, event: str) -> str:
    return str(page.evaluate(f"(document.querySelector(\"tr[data-event='{event}']\") || {{}}).textContent || ''"))


def test_two_reviewers_must_agree_and_the_node_refuses_a_one_reviewer_command(web: Web) -> None:
    two, one = web.d2
    watcher = web.login("sgt-0042")  # another officer's open queue follows each decision
    watcher.wait_for_selector("#live-state.on")
    assert "0 of 2 reviewers" in row_text(watcher, two)
    first = web.login("pc-4711")
    decide(first, web.server.url, two, "confirmed", "matches the reference")
    assert first.text_content("#alert-status") == "open" and "1 of 2 required" in first.inner_text("main")
    assert until(watcher, f"(document.querySelector(\"tr[data-event='{two}']\") || {{}}).textContent"
                          ".includes('1 of 2 reviewers')")
    decide(first, web.server.url, two, "confirmed", "again, to force it through")
    assert "Refused" in first.inner_text("#refused")  # one account cannot be both reviewers
    console = web.server.console
    assert [d.reviewer for d in console.alert(two).decisions] == ["pc-4711"] and console.alert(two).outcome is None
    second = web.login("pc-0815")
    decide(second, web.server.url, two, "confirmed", "agree: same person")
    assert second.text_content("#alert-status") == "confirmed"
    assert until(watcher, f"!document.querySelector(\"tr[data-event='{two}']\")")  # it stands: it leaves
    # the other alert: the two reviewers disagree, and the open queue says so
    decide(first, web.server.url, one, "confirmed", "looks like him")
    decide(second, web.server.url, one, "dismissed", "the ears differ")
    assert second.text_content("#alert-status") == "disputed" and console.alert(one).outcome is None
    assert until(watcher, f"(document.querySelector(\"tr[data-event='{one}'] .tag\") || {{}}).textContent "
                          "=== 'disputed'")
    watcher.context.close()
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


def edge_fleet_user(web: Web, *args: str, stdin: str | None = None) -> None:
    """`edge-fleet console user ...` as the admin runs it on the console host: another process, same files."""
    done = subprocess.run([sys.executable, "-m", "provisioning.cli", "console", "user", *args, "--console-dir",
                           str(web.server.console_dir)], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_a_new_password_or_a_disabled_account_ends_open_sessions_and_their_live_queue(web: Web) -> None:
    for name, change in (("pc-0815", ("passwd", "pc-0815", "--password-stdin")), ("pc-1234", ("disable", "pc-1234"))):
        page = web.login(name)
        page.wait_for_selector("#live-state.on")
        cookie = cookie_of(page)
        assert request(web, "GET", "/fleet", cookie=cookie)[0] == 200
        edge_fleet_user(web, *change, stdin=PASSWORD + "\n")  # the same password: still a new one
        # no alert, no click: the open stream's own re-check ends it, and the page says so
        assert until(page, "document.getElementById('live-state').textContent === 'ended'")
        assert "Session ended" in page.inner_text("#live-banner")
        code, headers, _ = request(web, "GET", "/fleet", cookie=cookie)
        assert code == 303 and headers["location"] == "/login"
        page.context.close()
    web.login("pc-0815").context.close()  # the new password logs in afresh
    edge_fleet_user(web, "enable", "pc-1234")


def test_an_open_live_queue_keeps_the_officer_on_watch_logged_in_until_the_shift_ends(web: Web) -> None:
    """Watching the queue is use (no idle logout while waiting for alerts), but never past the absolute age."""
    from datetime import timedelta

    t0 = now()
    clock = [t0]
    quiet = ConsoleWeb(web.server.console, lambda: clock[0], WebSettings(heartbeat_s=0.01))
    token, _ = quiet.sessions.create("pc-4711", "reviewer", web.server.console.accounts.get("pc-4711").password_epoch)

    async def read(step: timedelta, most: int) -> list[str]:
        out = []
        async for chunk in quiet._stream(token, None):
            out.append(chunk)
            clock[0] += step  # only heartbeats: no page, image or decision of the officer's
            if len(out) >= most:
                break
        return out

    watching = run_async(read(timedelta(minutes=14), 6))  # 70 min of quiet watching, idle limit 15 min
    assert watching[0].startswith("retry:") and watching[1:] == [": alive\n\n"] * 5
    ended = run_async(read(timedelta(hours=3), 8))  # the shift's 10 h pass
    assert ended[-1] == "event: ended\ndata: session\n\n" and ended[1:-1] == [": alive\n\n"] * (len(ended) - 2)


def test_the_live_feed_is_bounded_numbered_and_keeps_a_decided_alert_out() -> None:
    import threading

    rows = {"a1": "<tr class='alert-row'>a1</tr>", "a2": "<tr class='alert-row'>a2</tr>"}
    rendering = threading.Event()

    def render(event_id: str) -> str | None:
        rendering.wait(10)  # a row still being rendered in a worker thread...
        return rows.get(event_id)

    feed = AlertFeed(render, stream_queue=3)

    async def run() -> None:
        with feed.subscription() as slow, feed.subscription() as fast:
            late = asyncio.create_task(feed.render_and_publish("alert", "a1"))
            await asyncio.sleep(0)  # its render has begun
            feed.decided("a1", "dismissed")  # ...when the alert is decided
            rendering.set()
            await late  # so the late row is not sent after the "decided"
            await feed.render_and_publish("alert", "a2")
            await feed.render_and_publish("alert", "a1")  # rendered after: open again (the node refused)
            got = [fast.queue.get_nowait() for _ in range(fast.queue.qsize())]
            assert [(e.kind, e.seq, json.loads(e.data)["id"]) for e in got] == [
                ("decided", 1, "a1"), ("alert", 2, "a2"), ("alert", 3, "a1")]
            assert slow.queue.qsize() == 3 and not slow.overflowed
            for n in range(5):  # `slow` never reads: it is bounded, then told to start afresh
                feed.publish("changed", json.dumps({"n": n}))
                while not fast.queue.empty():
                    fast.queue.get_nowait()
            assert slow.queue.qsize() == 1 and slow.queue.get_nowait().kind == "reset" and slow.overflowed
        assert [e.seq for e in feed.missed(f"{feed.epoch}.6") or []] == [7, 8]
        assert feed.missed(f"{feed.epoch}.99") is None and feed.missed("another.1") is None

    run_async(run())


def test_logins_are_limited_per_address_and_in_how_many_are_checked_at_once() -> None:
    t = [0.0]
    throttle = AddressThrottle(LoginLimits(burst=3, refill_s=6.0), clock=lambda: t[0])
    for _ in range(3):
        throttle.take("192.0.2.7")
    with pytest.raises(LoginThrottledError) as refused:
        throttle.take("192.0.2.7")
    assert refused.value.retry_after == 6
    throttle.take("192.0.2.8")  # another address has its own allowance
    t[0] += 6.0
    throttle.take("192.0.2.7")  # one more after refill_s
    with pytest.raises(LoginThrottledError):
        throttle.take("192.0.2.7")

    async def gate() -> None:
        g = LoginGate(LoginLimits(concurrent=2, wait_s=0.05))
        async with g.slot(), g.slot():
            with pytest.raises(LoginBusyError):
                async with g.slot():
                    pass
        async with g.slot():  # freed again
            pass

    run_async(gate())


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
    assert supervisor.query_selector("#report-refused") is None
    # a device audit log that does not verify: its figures are refused on the page, the console's still shown
    node_log = web.node.site.node_dir / "audit" / "audit.jsonl"
    tampered = web.node.site.root / "tampered-audit.jsonl"
    shutil.copy(node_log, tampered)
    lines = tampered.read_text().splitlines()
    record = json.loads(lines[1])
    record["data"] = {**record["data"], "added": "afterwards"}
    lines[1] = json.dumps(record)
    tampered.write_text("\n".join(lines) + "\n")
    console = web.server.console
    console.fleet_view.audit_logs = (AuditSource(DEVICE, tampered),)
    try:
        supervisor.goto(f"{web.server.url}/report")
        assert tampered.name in supervisor.inner_text("#report-refused")
        assert D1 in supervisor.inner_text("table.report")
    finally:
        console.fleet_view.audit_logs = ()
    supervisor.context.close()
    admin = web.login("admin-1", lands="/admin")  # an admin starts on the accounts: no queue
    listed = admin.inner_text("table.accounts")
    assert all(name in listed for name in ("pc-4711", "pc-0815", "sgt-0042", "admin-1", "pc-9999"))
    assert "Queue" not in admin.inner_text("header nav")
    admin.goto(f"{web.server.url}/alert/{web.d2[1]}")
    assert "403" in admin.inner_text("main") and admin.query_selector("#face") is None
    cookie = cookie_of(admin)
    # an admin sees no face and no watch-list data: not the alert, its crops, the photo, nor the live queue
    entry = web.server.console.alert(web.d2[1]).entry_id
    for url in (f"/alert/{web.d2[1]}", f"/alert/{web.d2[1]}/face.jpg", f"/reference/{entry}/0", "/events"):
        assert request(web, "GET", url, cookie=cookie)[0] == 403, url
    assert request(web, "GET", "/", cookie=cookie)[1]["location"] == "/admin"
    for url in ("/fleet", "/report", "/admin"):
        assert request(web, "GET", url, cookie=cookie)[0] == 200, url
    admin.context.close()


def test_a_refusal_for_an_alert_gone_meanwhile_is_a_404_not_a_500(web: Web) -> None:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    session = web.server.web.sessions.create("pc-4711", "reviewer")[1]
    scope = {"type": "http", "method": "POST", "path": "/alert/gone/decide", "headers": [], "query_string": b"",
             "state": {"session": session}}
    with pytest.raises(HTTPException) as gone:  # the decision was refused, then retention purged the alert
        run_async(web.server.web._refused(Request(scope), "01234567-gone", "already decided", 409))
    assert gone.value.status_code == 404 and "already decided" in str(gone.value.detail)


def test_bytes_that_are_not_a_jpeg_or_png_are_never_served_as_an_image(web: Web) -> None:
    entry = web.server.console.alert(web.d1[0]).entry_id
    photo = next((web.node.fleet.dir / "watchlists").glob(f"*/photos/{entry}-0.*"))
    kept = photo.read_bytes()
    token, _ = web.server.web.sessions.create("pc-4711", "reviewer",
                                              web.server.console.accounts.get("pc-4711").password_epoch)
    views = len(web.server.journal("view"))
    photo.write_bytes(b"<html><script>alert(document.cookie)</script></html>")  # what a file could hold
    try:
        code, headers, body = request(web, "GET", f"/reference/{entry}/0", cookie=f"__Host-console-session={token}")
    finally:
        photo.write_bytes(kept)
    assert code == 415 and headers["content-type"].startswith("text/plain") and b"<script>" not in body
    assert b"not a JPEG or PNG" in body and len(web.server.journal("view")) == views  # nothing was shown


def test_console_serve_takes_review_keys_repeated_and_refuses_one_outside_the_review_role(web: Web) -> None:
    fleet = web.node.fleet.dir
    review = sorted((fleet / "keys").glob("review-*.pem"))[0]
    command = sorted((fleet / "keys").glob("command-*.pem"))[0]
    tls = web.node.broker.directory
    done = subprocess.run(
        [sys.executable, "-m", "provisioning.cli", "console", "serve", "--fleet-dir", str(fleet), "--broker",
         web.node.url, "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(tls / "broker.crt"), "--tls-key",
         str(tls / "broker.key"), "--console-dir", str(web.node.site.root / "console-refused"),
         "--review-key", str(review), "--review-key", str(command)],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and command.name in lines[0] and lines[0].startswith("edge-fleet console: "), lines


def test_the_fleet_page_says_what_it_cannot_read_in_a_device_state(web: Web) -> None:
    from datetime import timedelta

    odd = {"status": "online", "detail": {"camera": "reopening", "pipeline": [24], "shard": 7, "vault": None,
                                          "effectiveness": {"d": 3, "e": {"faces_seen": 9}}}}
    flat = {"status": "offline", "detail": ["not", "an", "object"]}
    t = now()
    html = web.server.web.templates.get_template("fleet.html").render(
        devices=[DeviceView("dev-odd", True, t - timedelta(seconds=5), odd),
                 DeviceView("dev-flat", False, t, flat),
                 DeviceView("dev-list", True, t, {"status": "online", "detail": {"effectiveness": ["x"]}})],
        now=t, session=None)
    assert html.count("not readable") == 6 and "9 faces" in html  # camera, pipeline, shard, eff. d, list; flat
    assert "state not readable" in html


def test_a_flood_of_logins_from_one_address_is_refused_before_any_hashing(web: Web) -> None:
    web.server.web.throttle = AddressThrottle(LoginLimits(burst=1, refill_s=600.0))
    failed = len(web.server.journal("login-failed"))
    answers = []
    for _ in range(3):
        ctx = web.browser.new_context(ignore_https_errors=True)
        page = ctx.new_page()
        page.goto(f"{web.server.url}/login")
        page.fill("input[name=name]", "nobody-here")
        page.fill("input[name=password]", "not the password")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.click("button[type=submit]")
        answers.append((posted.value.status, posted.value.headers.get("retry-after")))
        if posted.value.status == 429:
            assert "Too many login attempts" in page.inner_text("#login-error")
        ctx.close()
    assert answers[0] == (401, None) and [code for code, _ in answers[1:]] == [429, 429]
    assert all(0 < int(after or 0) <= 600 for _, after in answers[1:])
    assert len(web.server.journal("login-failed")) == failed + 1  # only the one that was checked
