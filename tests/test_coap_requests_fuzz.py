"""The CoAP request handler (adapters/_coaprequests.py) against a sans-IO broker on a
Clock, fed requests hypothesis makes up: any method, path, query, option and payload
gets an answer with a CoAP code, and never 5.00 (an exception we did not map) nor a
logged failure."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters._coaprequests import CoapConfig, CoapRequests
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.testing import make_broker


class Link:
    """A peer that keeps what it is notified."""

    peer_text = "127.0.0.1:5683"

    def __init__(self) -> None:
        self.notes: list[Any] = []

    def send_notification(self, client: Any, obs: Any, note: Any, confirmable: bool) -> None:
        self.notes.append(note)


segment = st.sampled_from(["ps", "mqtt", "connection", "a", "b", "+", "#", "$SYS", "",
                           "$share", "g", "\u00e9", "x" * 40])
query = st.one_of(
    st.sampled_from(["qos=0", "qos=1", "qos=2", "qos=3", "qos=", "retain=true",
                     "retain=no", "retain=maybe", "expiry=10", "expiry=-1", "clientid=c1",
                     "clientid=", "username=u", "password=p", "token=t", "token=\u00e9",
                     "nokey", "=", "qos"]),
    st.text(max_size=12).map(lambda t: "clientid=" + t))
option = st.one_of(
    st.tuples(st.sampled_from([opt.OBSERVE, opt.CONTENT_FORMAT, opt.ACCEPT, opt.BLOCK1,
                               opt.BLOCK2, opt.SIZE1, opt.SIZE2, opt.URI_HOST,
                               opt.URI_PORT, opt.ETAG, 9, 10, 2049]),
              st.binary(max_size=4)))


@st.composite
def requests(draw: Any) -> m.CoapMessage:
    msg = m.CoapMessage(draw(st.sampled_from([m.CON, m.NON])),
                        draw(st.integers(1, 31)), draw(st.integers(0, 0xFFFF)),
                        draw(st.binary(max_size=8)), [], draw(st.binary(max_size=100)))
    path = draw(st.lists(segment, max_size=4))
    if draw(st.booleans()):
        path = ["ps", *path]
    for part in path:
        msg.add(opt.URI_PATH, part)
    for q in draw(st.lists(query, max_size=4)):
        msg.add(opt.URI_QUERY, q)
    msg.options += draw(st.lists(option, max_size=3))
    return msg


class HandlerFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        broker, self.clock = make_broker()
        config = CoapConfig(max_observations=4, max_payload=64, szx=1)
        self.requests = CoapRequests(self.clock, Gateway(broker), config)
        self.link = Link()

    @settings(max_examples=300, deadline=None, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(requests(), min_size=1, max_size=6))
    def test_every_request_gets_a_mapped_answer(self, batch: list[m.CoapMessage]) -> None:
        with capturedLogs() as events:
            for request in batch:
                answers: list[Any] = []
                self.requests.answer(request, self.link).addBoth(answers.append)
                self.clock.advance(0)
                self.assertEqual(len(answers), 1, request)
                response, after = answers[0]
                if after is not None:
                    after()
                self.assertNotEqual(m.code_text(response.code), "5.00", (request, response))
                self.assertIn(response.code >> 5, (2, 4, 5), (request, response))
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(failures, [])
