"""The dashboard (/dashboard/) in headless Chromium: live connections, message rates and
their chart, top topics, clients with search, and kick, from the admin API and its SSE;
a screenshot is saved under the test's temporary directory.  And the files ship in the
wheel (package data), so that ``pip install .`` serves them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from tests.cdp import Browser
from tests.httpbroker import HTTPBrokerTestCase
from tests.test_auth_passwd import ALICE, CAROL

ROOT = Path(__file__).resolve().parent.parent


class DashboardBrowserTests(HTTPBrokerTestCase):
    """A broker with MQTT and HTTP listeners, paho clients publishing, and Chromium."""

    timeout = 120

    @inlineCallbacks
    def test_live_dashboard(self) -> None:
        """The page shows the connections, the rates (a chart with points), the busiest
        topic and the clients; a search narrows the clients; Kick disconnects one."""
        publisher = yield self.paho("sensor-publisher")
        watcher = yield self.paho("sensor-watcher")
        bystander = yield self.paho("other-client")
        yield watcher.subscribe(("sensors/#", 0))
        for _ in range(64):
            publisher.client.publish("sensors/busy", b"1", 0)
        traffic = LoopingCall(lambda: [publisher.client.publish("sensors/busy", b"1", 0)
                                       for _ in range(20)])
        traffic.clock = self.reactor
        traffic.start(0.1)
        self.addCleanup(lambda: traffic.running and traffic.stop())
        browser = Browser(self, self.reactor)
        yield browser.start()
        yield browser.command("Page.navigate", url=self.url("/dashboard"))
        yield browser.wait_for("document.getElementById('status').classList.contains('live')")
        yield browser.wait_for("document.querySelectorAll('#clients tr').length === 3")
        yield browser.wait_for("Number(document.getElementById('rate-in').textContent) > 0")
        yield browser.wait_for(
            "document.getElementById('line-in').getAttribute('points').split(' ').length >= 2")
        self.assertEqual((yield browser.evaluate(
            "document.getElementById('connections').textContent")), "3")
        top = yield browser.evaluate(
            "document.querySelector('#top-topics tr td').textContent")
        self.assertEqual(top, "sensors/busy")
        rows = yield browser.evaluate(
            "[...document.querySelectorAll('#clients tr')].map(r => r.dataset.client)")
        self.assertEqual(rows, ["other-client", "sensor-publisher", "sensor-watcher"])
        traffic.stop()

        # Search: typing narrows the table (the page asks the admin API).
        yield browser.evaluate(
            "(() => { const s = document.getElementById('search'); s.value = 'SENSOR';"
            " s.dispatchEvent(new Event('input')); })()")
        yield browser.wait_for("document.querySelectorAll('#clients tr').length === 2")
        shown = yield browser.evaluate(
            "[...document.querySelectorAll('#clients tr')].map(r => r.dataset.client)")
        self.assertEqual(shown, ["sensor-publisher", "sensor-watcher"])

        # Kick: the watcher is disconnected and leaves the table.
        yield browser.evaluate(
            "document.querySelector('#clients tr[data-client=\"sensor-watcher\"] "
            "button.kick').click()")
        yield watcher.disconnected
        yield browser.wait_for("document.querySelectorAll('#clients tr').length === 1")
        self.assertIn("Kicked sensor-watcher", (yield browser.evaluate(
            "document.getElementById('message').textContent")))
        self.assertIsNone(inspection.session_info(self.broker, "sensor-watcher"))
        self.assertTrue(inspection.session_info(self.broker, "other-client").online)
        self.assertFalse(bystander.is_disconnected)

        path = Path(self.mktemp())
        path.mkdir(parents=True)
        png = yield browser.screenshot(str(path / "dashboard.png"))
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 10_000)


class PackageDataTests(SynchronousTestCase):
    """The wheel carries the dashboard's files."""

    def test_wheel_ships_dashboard(self) -> None:
        """``pip wheel .`` (what ``pip install .`` builds) holds index.html,
        dashboard.js and dashboard.css under mqtt_twisted/dashboard/."""
        out = tempfile.mkdtemp(prefix="mqtt-twisted-wheel-")
        self.addCleanup(__import__("shutil").rmtree, out, ignore_errors=True)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-q", "-w", out, str(ROOT)], capture_output=True, text=True,
            timeout=300, env={**os.environ, "MQTT_TWISTED_NO_EXT": "1"})  # (no C to compile)
        self.assertEqual(built.returncode, 0, built.stdout + built.stderr)
        (wheel,) = Path(out).glob("mqtt_twisted-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        for name in ("index.html", "dashboard.js", "dashboard.css"):
            self.assertIn(f"mqtt_twisted/dashboard/{name}", names)


class DashboardAuthBrowserTests(HTTPBrokerTestCase):
    """With --auth passwd and carol as --admin-user, in Chromium."""

    timeout = 120
    settings = BrokerSettings(admin_users=frozenset({"carol"}))

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.authenticator = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "f"),
                                                       reactor=reactor)
        return super().setUp()

    @inlineCallbacks
    def test_admin_logs_in(self) -> None:
        """Credentials given once (as a login prompt would) carry the page's own API and
        SSE requests: carol's dashboard goes live and lists her client; alice's page is
        refused (403), so no data reaches it."""
        client = yield self.paho("carols-device", username="carol", password="c3")
        self.assertTrue(client)
        browser = Browser(self, self.reactor)
        yield browser.start()
        port = self.http_port
        yield browser.command("Page.navigate",
                              url=f"http://alice:secret1@127.0.0.1:{port}/dashboard/")
        yield browser.wait_for("document.body && document.body.innerText.includes('admin')")
        self.assertIsNone((yield browser.evaluate("document.getElementById('clients')")))
        yield browser.command("Page.navigate",
                              url=f"http://carol:c3@localhost:{port}/dashboard/")
        yield browser.wait_for("document.getElementById('status').classList.contains('live')")
        yield browser.wait_for("document.querySelectorAll('#clients tr').length === 1")
        self.assertEqual((yield browser.evaluate(
            "document.querySelector('#clients tr').dataset.client")), "carols-device")
