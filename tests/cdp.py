"""Headless Chromium driven over the DevTools protocol, from the reactor.

``--dump-dom`` (tests/test_browser.py) shows a page once it has loaded; a live page
(the dashboard, fed by Server-Sent Events) never stops loading data, and a test wants
to type and click too.  So the browser is started with ``--remote-debugging-port=0``,
its page target found at ``/json/list``, and commands (``Page.navigate``,
``Runtime.evaluate``, ``Page.captureScreenshot``) go over its WebSocket with
Autobahn, each answer a Deferred.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import Agent

from tests.certs import temp_dir
from tests.httpbroker import read_body
from tests.securebroker import spawn, within
from tests.test_browser import chromium


class _DevTools(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        waiter = self.factory.waiting.pop(message.get("id"), None)
        if waiter is None:
            return  # an event: not used
        if "error" in message:
            waiter.errback(AssertionError(f"DevTools: {message['error']}"))
        else:
            waiter.callback(message.get("result", {}))

    def onClose(self, wasClean: bool, code: int, reason: str) -> None:
        waiting, self.factory.waiting = self.factory.waiting, {}
        for d in waiting.values():
            d.errback(AssertionError(f"DevTools connection closed: {reason}"))
        if not self.factory.closed.called:
            self.factory.closed.callback(None)


class Browser:
    """One headless Chromium and its first page."""

    def __init__(self, case: Any, reactor: Any) -> None:
        self.case = case
        self.reactor = reactor
        self._ids = itertools.count(1)
        self.factory: Any = None
        self.process: Any = None

    @inlineCallbacks
    def start(self) -> Any:
        profile = temp_dir(self.case)
        self.process = spawn(self.case, self.reactor, [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--no-default-browser-check", "--remote-debugging-port=0",
            "--remote-allow-origins=*", "--window-size=1280,900",
            f"--user-data-dir={profile}", "about:blank",
        ], env={**os.environ, "HOME": profile}, path=profile)
        active = Path(profile) / "DevToolsActivePort"
        waited = 0.0
        while not (active.exists() and active.read_text().count("\n") >= 1):
            if waited > 40 or self.process.finished:
                raise AssertionError(f"chromium did not open DevTools:\n{self.process.text}")
            yield deferLater(self.reactor, 0.1, lambda: None)
            waited += 0.1
        port = int(active.read_text().split()[0])
        agent = Agent(self.reactor)
        response = yield within(agent.request(b"GET", b"http://127.0.0.1:%d/json/list" % port),
                                self.reactor, 20, "the DevTools target list")
        targets = json.loads((yield read_body(response)))
        page = next(t for t in targets if t["type"] == "page")
        factory = WebSocketClientFactory(page["webSocketDebuggerUrl"])
        factory.protocol = _DevTools
        factory.opened, factory.closed, factory.waiting = Deferred(), Deferred(), {}
        self.factory = factory
        yield TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(factory)
        self.protocol = yield within(factory.opened, self.reactor, 20, "DevTools to open")
        self.case.addCleanup(self.stop)

    def stop(self) -> Deferred[None]:
        if self.factory is not None and not self.factory.closed.called:
            self.protocol.sendClose()
            return within(self.factory.closed, self.reactor, 10, "DevTools to close")
        return succeed(None)

    def command(self, method: str, **params: Any) -> Deferred[Any]:
        ident = next(self._ids)
        d: Deferred[Any] = Deferred()
        self.factory.waiting[ident] = d
        self.protocol.sendMessage(json.dumps({"id": ident, "method": method,
                                              "params": params}).encode())
        return within(d, self.reactor, 20, method)

    @inlineCallbacks
    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = yield self.command("Runtime.evaluate", expression=expression,
                                    returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    @inlineCallbacks
    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy (one that throws, say before the page
        is there, counts as false); its value."""
        waited = 0.0
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = yield self.evaluate(guarded)
            if value:
                return value
            if waited >= timeout:
                html = yield self.evaluate("document.documentElement.outerHTML")
                raise AssertionError(f"{expression!r} still false after {timeout}s:\n{html}")
            yield deferLater(self.reactor, 0.1, lambda: None)
            waited += 0.1

    @inlineCallbacks
    def screenshot(self, path: str) -> Any:
        """Save a PNG of the page at ``path``; its bytes."""
        import base64

        result = yield self.command("Page.captureScreenshot", format="png")
        data = base64.b64decode(result["data"])
        Path(path).write_bytes(data)
        return data
