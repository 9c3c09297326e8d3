"""The officer's console under load: how fast an alert reaches the screen, and a burst it must not lose.

(a) Event at the broker -> alert on screen: one signed match event at a time (real crops sealed to the
    operator) is published by a registered device; the clock starts when the broker's PUBACK is back and stops
    when the row is in the queue page's DOM of a logged-in chromium (a MutationObserver notes the time; same
    host, same wall clock). `edge-fleet events tail` runs in the same run on its own operator certificate and
    is timed from the same PUBACK to its JSON line: p50 and p95 of both over --alerts (200), and their ratio.
(b) A burst of --burst (1,000) alerts from --devices (50) simulated devices publishing at once: every event id
    must be in the console's queue (nothing lost), time until the last is stored, the queue page's load time
    with everything open (median of 5 loads), and the console process's memory (VmRSS, VmHWM).
The console runs as `edge-fleet console serve` (its own process) against a mosquitto configured from the demo
fleet. Figures only; nothing is asserted on time. About 2-4 minutes.

    python3 bench/console_latency.py [--alerts 200] [--burst 1000] [--devices 50]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from consoleworld import PASSWORD, SimDevice, demo_crops, env  # noqa: E402
from consoleworld import NodeWorld as World  # noqa: E402
from mqttworld import free_port, wait_for  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
DEPLOYMENT = "bench-console"
OBSERVER = """() => { window.__seen = {}; const body = document.getElementById('queue-rows');
  new MutationObserver(() => { const t = performance.timeOrigin + performance.now();
    body.querySelectorAll('tr.alert-row').forEach(r => { if (!(r.dataset.event in window.__seen))
      window.__seen[r.dataset.event] = t; }); }).observe(body, {childList: true, subtree: true}); }"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}


class TailClock:
    """`edge-fleet events tail` on its own operator certificate: the wall time each event id was printed."""

    def __init__(self, world: World):
        fleet = world.site.fleet_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provisioning.cli", "events", "tail", "--broker", world.url, "--fleet-dir",
             str(fleet), "--operator", "tail", "--operator-key", str(fleet / "operators" / "demo.pem")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
        self.seen: dict[str, float] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.time()
            self.seen[json.loads(line)["event_id"]] = t

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_console(world: World, root: Path, port: int) -> subprocess.Popen[bytes]:
    console_dir = root / "console"
    for name in ("pc-4711",):
        subprocess.run([sys.executable, "-m", "provisioning.cli", "console", "user", "add", name, "--role",
                        "reviewer", "--password-stdin", "--console-dir", str(console_dir)],
                       input=PASSWORD.encode(), env=env(), check=True, capture_output=True)
    tls = world.broker.directory
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioning.cli", "console", "serve", "--fleet-dir", str(world.site.fleet_dir),
         "--broker", world.url, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tls / "broker.crt"),
         "--tls-key", str(tls / "broker.key"), "--console-dir", str(console_dir), "--operator", "demo"],
        env=env(), stderr=open(root / "console.log", "wb"))  # noqa: SIM115 - the process owns it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"console exited: {(root / 'console.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the console did not start listening")


def publish(device: SimDevice, n: int, out: list[str]) -> None:
    for _ in range(n):
        event_id, payload = device.event(DEPLOYMENT)
        device.peer.client.publish(device.topic, payload, qos=1).wait_for_publish(30)
        out.append(event_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=50)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing (scripts/bootstrap --dev installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = World.create(root, operators=("tail",))
        world.deploy(DEPLOYMENT, reviewers_required=1)
        crops = demo_crops()
        sims = [SimDevice(world, f"sim-{i:02d}", crops) for i in range(args.devices)]
        port = free_port()
        console = start_console(world, root, port)
        tail = TailClock(world)
        url = f"https://127.0.0.1:{port}"
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(f"{url}/login")
                page.fill("input[name=name]", "pc-4711")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#live-state.on")
                page.evaluate(OBSERVER)
                time.sleep(1.0)  # the tail's subscription is in place
                sim = sims[0].peer.connect()
                screen, tailed = [], []
                for _ in range(args.alerts):
                    event_id, payload = sims[0].event(DEPLOYMENT)
                    sim.client.publish(sims[0].topic, payload, qos=1).wait_for_publish(30)
                    at_broker = time.time()
                    wait_for(lambda eid=event_id: page.evaluate(f"'{eid}' in window.__seen"), 30, 0.005)
                    wait_for(lambda eid=event_id: eid in tail.seen, 30, 0.002)
                    screen.append(page.evaluate(f"window.__seen['{event_id}']") / 1000 - at_broker)
                    tailed.append(tail.seen[event_id] - at_broker)
                sim.close()
                ms = [1000 * s for s in screen]
                ms_tail = [1000 * s for s in tailed]
                print(f"(a) broker -> screen over {len(ms)} alerts: p50 {pct(ms, 50):.0f} ms, "
                      f"p95 {pct(ms, 95):.0f} ms, max {max(ms):.0f} ms; events tail: p50 {pct(ms_tail, 50):.0f} ms, "
                      f"p95 {pct(ms_tail, 95):.0f} ms;"
                      f" screen/tail p50 {pct(ms, 50) / max(pct(ms_tail, 50), 0.1):.1f}x, "
                      f"p95 {pct(ms, 95) / max(pct(ms_tail, 95), 0.1):.1f}x; within 1 s: "
                      f"{sum(m <= 1000 for m in ms)}/{len(ms)}")
                print(f"    console memory after (a): {memory(console.pid)} MiB")

                per_device = args.burst // args.devices
                published: list[str] = []
                for s in sims:
                    s.peer.connect()
                t0 = time.monotonic()
                threads = [threading.Thread(target=publish, args=(s, per_device, published)) for s in sims]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                t_published = time.monotonic() - t0
                total = args.alerts + len(published)
                rows = "document.querySelectorAll('tr.alert-row').length"
                got_all = wait_for(lambda: page.evaluate(rows) >= total, 300, 0.2)
                t_stored = time.monotonic() - t0
                on_page = set(page.eval_on_selector_all("tr.alert-row", "rs => rs.map(r => r.dataset.event)"))
                lost = [e for e in published if e not in on_page]
                print(f"(b) burst: {len(published)} alerts from {len(sims)} devices published in {t_published:.1f} s; "
                      f"all on the queue page after {t_stored:.1f} s: {got_all}; lost: {len(lost)}; "
                      f"tail printed {sum(e in tail.seen for e in published)}/{len(published)}")
                loads = []
                for _ in range(5):
                    page.goto(f"{url}/")
                    nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
                    loads.append(json.loads(nav)["loadEventEnd"])
                print(f"    queue page with {page.evaluate(rows)} open alerts: load {statistics.median(loads):.0f} ms "
                      f"(median of 5; min {min(loads):.0f}, max {max(loads):.0f})")
                print(f"    console memory after (b): {memory(console.pid)} MiB")
                for s in sims:
                    s.peer.close()
                browser.close()
        finally:
            tail.stop()
            console.terminate()
            console.wait(20)
            world.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
