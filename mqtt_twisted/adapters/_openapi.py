"""The HTTP bridge's OpenAPI 3.1 description, served at ``/openapi.json``.

Kept as Python so that it ships inside the package; docs/openapi.json is this
document written out (``python -m mqtt_twisted.adapters._openapi > docs/openapi.json``),
and a test checks that the two agree and that the server's answers follow it.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from mqtt_twisted import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


def _param(name: str, description: str, schema: dict[str, Any], required: bool = False,
           where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": schema}


_COMMON_ERRORS = {
    "400": _error("A parameter or header is missing or invalid (bad topic, QoS, ...)."),
    "401": {**_error("Credentials missing or refused by the authenticator."),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "403": _error("The authorizer refused."),
    "405": {**_error("Method not allowed on this path."),
            "headers": {"Allow": {"schema": {"type": "string"}}}},
    "408": _error("The request head was not whole within the listener's requestTimeout, or "
                  "its body came slower than minBodyRate (docs/limits.md); then closed."),
    "413": _error("The request body is larger than the listener's maxPayload."),
    "500": _error("An internal error (logged by the broker)."),
    "503": _error("The store is unavailable, or (/subscribe) the listener's maxStreams "
                  "streams and long polls are open (reason code 0x89); try again "
                  "(Retry-After)."),
}

_CLIENT = _param("client", "Client identifier. For /subscribe: a persistent session of this "
                 "id (queued messages kept between requests, Last-Event-ID resume); "
                 "otherwise: the client id the authenticator and authorizer see.",
                 {"type": "string", "minLength": 1})
_LIMIT = _param("limit", "Entries per page.", {"type": "integer", "minimum": 1,
                                                "maximum": 1000, "default": 100})
_QOS = _param("qos", "Quality of service.", {"type": "integer", "enum": [0, 1, 2], "default": 0})
_STRING = {"type": "string"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "reason_code"],
        "properties": {
            "error": {"type": "string", "description": "What went wrong, for people."},
            "reason_code": {"type": "integer", "minimum": 0, "maximum": 255,
                            "description": "The closest MQTT 5 reason code (0x80: none)."},
        },
        "additionalProperties": False,
    },
    "Message": {
        "type": "object",
        "description": "One message as a subscriber receives it.",
        "required": ["topic", "qos", "retain", "payload", "payload_encoding"],
        "properties": {
            "id": {"type": "string", "description": "Event id (the SSE id), for Last-Event-ID."},
            "topic": {"type": "string"},
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "retain": {"type": "boolean"},
            "payload": {"type": "string"},
            "payload_encoding": {"type": "string", "enum": ["plain", "base64"],
                                 "description": "plain: the payload is UTF-8 text as it is; "
                                                "base64: it was not UTF-8."},
            "properties": _ref("Properties"),
        },
        "additionalProperties": False,
    },
    "Properties": {
        "type": "object",
        "description": "The MQTT 5 properties the message carries.",
        "properties": {
            "payload_format_indicator": {"type": "integer", "enum": [0, 1]},
            "message_expiry_interval": {"type": "integer", "minimum": 0,
                                        "description": "Seconds left."},
            "content_type": _STRING,
            "response_topic": _STRING,
            "correlation_data": _STRING,
            "correlation_data_encoding": {"type": "string", "enum": ["base64"]},
            "user_properties": {"type": "array", "items": {
                "type": "array", "items": _STRING, "minItems": 2, "maxItems": 2}},
        },
        "additionalProperties": False,
    },
    "PublishResult": {
        "type": "object",
        "required": ["topic", "qos", "retain", "subscribers", "reason_code"],
        "properties": {
            "topic": _STRING,
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "retain": {"type": "boolean"},
            "subscribers": {"type": "integer", "minimum": 0,
                            "description": "Sessions the message was routed to."},
            "reason_code": {"type": "integer", "enum": [0, 16],
                            "description": "0, or 16 (0x10): no matching subscribers."},
        },
        "additionalProperties": False,
    },
    "PollResult": {
        "type": "object",
        "required": ["client", "messages"],
        "properties": {
            "client": {"type": "string", "description": "The session's client identifier."},
            "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
        },
        "additionalProperties": False,
    },
    "RetainedResult": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "items": _ref("Message")},
            "next": {"type": "string", "description": "More messages follow: ask again "
                     "with after=<this topic>. Absent on the last page."},
        },
        "additionalProperties": False,
    },
    "Subscribed": {
        "type": "object",
        "description": "Data of the first SSE event (event: subscribed).",
        "required": ["client", "subscriptions"],
        "properties": {
            "client": _STRING,
            "subscriptions": {"type": "array", "items": {
                "type": "object", "required": ["topic", "qos"],
                "properties": {"topic": _STRING, "qos": {"type": "integer", "enum": [0, 1, 2]}},
                "additionalProperties": False}},
        },
        "additionalProperties": False,
    },
    "Closed": {
        "type": "object",
        "description": "Data of the last SSE event (event: close): why the stream ended "
                       "(0x8E taken over, 0x98 removed, 0x8B shutdown).",
        "required": ["reason_code"],
        "properties": {"reason_code": {"type": "integer", "minimum": 0, "maximum": 255}},
        "additionalProperties": False,
    },
    "SubscribeBody": {
        "type": "object",
        "description": "POST /subscribe body: any query parameter, and 'topics' for several "
                       "filters.",
        "properties": {
            "topic": _STRING,
            "topics": {"type": "array", "items": _STRING},
            "qos": {"type": "integer", "enum": [0, 1, 2]},
            "client": _STRING,
            "timeout": {"type": "number"},
            "max": {"type": "integer"},
            "expiry": {"type": "integer"},
        },
    },
}


_NULLABLE_STRING = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_CLIENT_FIELDS: dict[str, Any] = {
    "client_id": _STRING,
    "online": {"type": "boolean", "description": "A connection is attached."},
    "persistent": {"type": "boolean", "description": "The session outlives its connection."},
    "adapter": {**_NULLABLE_STRING, "description": "mqtt, ws, auto, http, coap...; null "
                "while offline."},
    "protocol": {**_NULLABLE_STRING, "description": "mqtt3.1, mqtt3.1.1, mqtt5, or the "
                 "adapter's name for an adapter's session; null while offline."},
    "peer": {**_NULLABLE_STRING, "description": "The client's address; null while offline."},
    "user": {**_NULLABLE_STRING, "description": "The user the session belongs to."},
    "queued": {**_COUNT, "description": "Messages waiting behind the in-flight window."},
    "inflight": {**_COUNT, "description": "QoS 1/2 messages sent, not yet acknowledged."},
}
_ADMIN_SCHEMAS: dict[str, Any] = {
    "ClientSummary": {
        "type": "object",
        "required": [*_CLIENT_FIELDS, "subscriptions"],
        "properties": {**_CLIENT_FIELDS, "subscriptions": {
            **_COUNT, "description": "Subscriptions held."}},
        "additionalProperties": False,
    },
    "ClientList": {
        "type": "object",
        "required": ["clients"],
        "properties": {
            "clients": {"type": "array", "items": _ref("ClientSummary")},
            "next": {"type": "string", "description": "More follow: ask again with "
                     "after=<this client id>. Absent on the last page."},
        },
        "additionalProperties": False,
    },
    "Client": {
        "type": "object",
        "required": [*_CLIENT_FIELDS, "subscriptions", "subscription_count", "inflight_ids",
                     "dropped", "expiry_interval", "disconnected_at", "will_topic",
                     "keep_alive", "paused"],
        "properties": {
            **_CLIENT_FIELDS,
            "subscriptions": {"type": "array", "items": {
                "type": "object",
                "required": ["topic", "qos", "no_local", "retain_as_published",
                             "retain_handling"],
                "properties": {"topic": _STRING, "qos": {"type": "integer", "enum": [0, 1, 2]},
                               "no_local": {"type": "boolean"},
                               "retain_as_published": {"type": "boolean"},
                               "retain_handling": {"type": "integer", "enum": [0, 1, 2]}},
                "additionalProperties": False}},
            "subscription_count": _COUNT,
            "inflight_ids": {"type": "array", "items": {"type": "integer"},
                             "description": "Packet ids in flight, in order."},
            "dropped": {**_COUNT, "description": "Queued messages dropped (queue full)."},
            "expiry_interval": {"type": ["number", "null"],
                                "description": "Session expiry in seconds; null: never."},
            "disconnected_at": {"type": ["number", "null"], "description": "Unix time."},
            "will_topic": _NULLABLE_STRING,
            "keep_alive": {"type": ["integer", "null"]},
            "paused": {"type": "boolean", "description": "Its transport is full: the broker "
                       "queues for it."},
        },
        "additionalProperties": False,
    },
    "SubscriptionList": {
        "type": "object",
        "required": ["subscriptions"],
        "properties": {
            "subscriptions": {"type": "array", "items": {
                "type": "object", "required": ["topic", "client_id", "qos"],
                "properties": {"topic": _STRING, "client_id": _STRING,
                               "qos": {"type": "integer", "enum": [0, 1, 2]}},
                "additionalProperties": False}},
            "next": {"type": "string", "description": "More follow: ask again with "
                     "after=<this cursor>. Absent on the last page."},
        },
        "additionalProperties": False,
    },
    "RetainedTopics": {
        "type": "object",
        "required": ["topics"],
        "properties": {
            "topics": {"type": "array", "items": {
                "type": "object", "required": ["topic", "qos", "bytes"],
                "properties": {"topic": _STRING, "qos": {"type": "integer", "enum": [0, 1, 2]},
                               "bytes": {**_COUNT, "description": "Payload size."}},
                "additionalProperties": False}},
            "next": {"type": "string", "description": "More follow: ask again with "
                     "after=<this topic>. Absent on the last page."},
        },
        "additionalProperties": False,
    },
    "RatePoint": {
        "type": "object",
        "required": ["time", "in", "out", "bytes_in", "bytes_out", "connections"],
        "properties": {"time": {"type": "number"},
                       "in": {"type": "number", "description": "Messages in a second."},
                       "out": {"type": "number", "description": "Messages out a second."},
                       "bytes_in": {"type": "number"}, "bytes_out": {"type": "number"},
                       "connections": _COUNT},
        "additionalProperties": False,
    },
    "Stats": {
        "type": "object",
        "required": ["version", "time", "uptime_seconds", "connections",
                     "connections_by_adapter", "sessions", "subscriptions", "queued",
                     "inflight", "counters", "top_topics", "history"],
        "properties": {
            "version": _STRING,
            "time": {"type": "number", "description": "The broker's clock (Unix time)."},
            "uptime_seconds": {"type": "number"},
            "connections": _COUNT,
            "connections_by_adapter": {"type": "object", "additionalProperties": _COUNT},
            "sessions": {"type": "object", "required": ["online", "offline"],
                         "properties": {"online": _COUNT, "offline": _COUNT},
                         "additionalProperties": False},
            "subscriptions": _COUNT, "queued": _COUNT, "inflight": _COUNT,
            "counters": {"type": "object", "additionalProperties": _COUNT,
                         "description": "The broker's counters since it started "
                                        "(docs/admin-api.md)."},
            "top_topics": {"type": "array", "items": {
                "type": "object", "required": ["topic", "messages"],
                "properties": {"topic": _STRING, "messages": {
                    **_COUNT, "description": "Estimated from one message in 16, decaying."}},
                "additionalProperties": False}},
            "history": {"type": "array", "items": _ref("RatePoint"),
                        "description": "A point a second, the last ten minutes."},
        },
        "additionalProperties": False,
    },
}
_stats = _ADMIN_SCHEMAS["Stats"]
_ADMIN_SCHEMAS["StatsEvent"] = {
    **_stats,
    "description": "Data of an /admin/events 'stats' event: Stats without its history, "
                   "with the latest point.",
    "required": [*(r for r in _stats["required"] if r != "history"), "point"],
    "properties": {**{k: v for k, v in _stats["properties"].items() if k != "history"},
                   "point": {"oneOf": [_ref("RatePoint"), {"type": "null"}]}},
}
_SCHEMAS.update(_ADMIN_SCHEMAS)


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict:
    return _param(name, description, schema or _STRING, where="header")


_PUBLISH = {
    "summary": "Publish a message; the body is the payload.",
    "operationId": "publish",
    "parameters": [
        _param("topic", "Topic name (no wildcards).", _STRING, required=True),
        _QOS,
        _param("retain", "Retain the message (an empty body deletes the retained one).",
               {"type": "string", "enum": ["0", "1", "true", "false"], "default": "0"}),
        _CLIENT,
        _header("MQTT-Payload-Format-Indicator", "0: bytes, 1: UTF-8 text.",
                {"type": "string", "enum": ["0", "1"]}),
        _header("MQTT-Message-Expiry-Interval", "Seconds the message may wait for a subscriber.",
                {"type": "string", "pattern": "^[0-9]+$"}),
        _header("MQTT-Content-Type", "Content type property (MIME type, free text)."),
        _header("MQTT-Response-Topic", "Response topic (a topic name)."),
        _header("MQTT-Correlation-Data", "Correlation data (the header's UTF-8 bytes)."),
        _header("MQTT-User-Property", "name=value, percent-encoded; repeat the header for "
                "several."),
    ],
    "requestBody": {"required": False, "content": {"*/*": {"schema": {
        "type": "string", "format": "binary"}}}},
    "responses": {
        "200": _json("PublishResult", "Routed; for QoS 1/2 (and retained messages) only once "
                     "the store holds it."),
        **_COMMON_ERRORS,
        "415": _error("A Content-Encoding other than identity."),
    },
}

_SUBSCRIBE_PARAMS = [
    _param("topic", "Topic filter (wildcards allowed); repeat for several.",
           {"type": "string"}, required=True),
    _QOS, _CLIENT,
    _param("timeout", "Long poll only: seconds to wait for a message (0..300).",
           {"type": "number", "minimum": 0, "maximum": 300, "default": 30}),
    _param("max", "Long poll only: most messages in one answer (1..1000); the rest wait in a "
           "persistent session.", {"type": "integer", "minimum": 1, "maximum": 1000,
                                   "default": 100}),
    _param("expiry", "With client: seconds the session outlives its last request.",
           {"type": "integer", "minimum": 0}),
    _header("Accept", "text/event-stream for a stream of Server-Sent Events; anything else "
            "for a long poll."),
    _header("Last-Event-ID", "With client: resend the events after this id that the last "
            "stream or poll may not have delivered."),
]

_SUBSCRIBE_RESPONSES = {
    "200": {
        "description": "SSE: 'event: subscribed' (data: Subscribed), then one event per "
                       "message (data: Message, id: its id), comment lines as a heartbeat, "
                       "and 'event: close' (data: Closed) if the broker ends it. Long poll: "
                       "the messages that arrived.",
        "content": {
            "text/event-stream": {"schema": {"type": "string"}},
            "application/json": {"schema": _ref("PollResult")},
        },
    },
    "204": {"description": "Long poll: no message arrived within the timeout."},
    **_COMMON_ERRORS,
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mqtt-twisted HTTP bridge",
        "version": __version__,
        "description": "Publish and subscribe over HTTP on the same broker as MQTT clients "
                       "(docs/http-api.md); for admin users, metrics, the admin API and the "
                       "dashboard (docs/admin-api.md).",
    },
    "servers": [{"url": "/"}],
    "security": [{}, {"basic": []}, {"bearer": []}],
    "paths": {
        "/publish": {"post": _PUBLISH},
        "/subscribe": {
            "get": {"summary": "Subscribe: Server-Sent Events or a long poll.",
                    "operationId": "subscribe", "parameters": _SUBSCRIBE_PARAMS,
                    "responses": _SUBSCRIBE_RESPONSES},
            "post": {"summary": "Subscribe, with parameters in a JSON or form body as well.",
                     "operationId": "subscribePost", "parameters": _SUBSCRIBE_PARAMS,
                     "requestBody": {"required": False, "content": {
                         "application/json": {"schema": _ref("SubscribeBody")},
                         "application/x-www-form-urlencoded": {"schema": _ref("SubscribeBody")},
                     }},
                     "responses": {**_SUBSCRIBE_RESPONSES, "415": _error(
                         "A body that is neither JSON nor a form.")}},
        },
        "/retained": {"get": {
            "summary": "The retained messages matching a topic filter.",
            "operationId": "retained",
            "parameters": [
                _param("topic", "Topic filter (not $share/...).", _STRING, required=True),
                _param("limit", "Messages per page (a page also ends after 1 MiB of "
                       "payload).", {"type": "integer", "minimum": 1, "maximum": 1000,
                                     "default": 100}),
                _param("after", "Only topics sorting after this one: the previous page's "
                       "next.", _STRING),
                _CLIENT],
            "responses": {"200": _json("RetainedResult", "Sorted by topic, one page."),
                          **_COMMON_ERRORS},
        }},
        "/session": {"delete": {
            "summary": "Disconnect a client (any adapter) and remove its session.",
            "operationId": "deleteSession",
            "parameters": [_param("client", "Client identifier.", _STRING, required=True)],
            "responses": {
                "204": {"description": "Disconnected (MQTT 5 clients get DISCONNECT 0x98) and "
                                       "removed."},
                **_COMMON_ERRORS,
                "404": _error("No session of that client."),
            },
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (docs/metrics.md), for admin users.",
            "operationId": "metrics",
            "parameters": [_header("Accept", "application/openmetrics-text for OpenMetrics; "
                                   "otherwise Prometheus's text format 0.0.4.")],
            "responses": {
                "200": {"description": "Every metric, read when asked.", "content": {
                    "text/plain": {"schema": _STRING},
                    "application/openmetrics-text": {"schema": _STRING}}},
                **_COMMON_ERRORS,
            },
        }},
        "/admin/clients": {"get": {
            "summary": "A page of sessions by client id (admins).",
            "operationId": "adminClients",
            "parameters": [
                _param("search", "Only client ids, peers or users containing this (any "
                       "case).", _STRING),
                _LIMIT, _param("after", "The previous page's next.", _STRING)],
            "responses": {"200": _json("ClientList", "One page."), **_COMMON_ERRORS},
        }},
        "/admin/client": {
            "get": {"summary": "One session in full (admins).",
                    "operationId": "adminClient",
                    "parameters": [_param("client", "Client identifier.", _STRING,
                                          required=True)],
                    "responses": {"200": _json("Client", "The session."), **_COMMON_ERRORS,
                                  "404": _error("No session of that client.")}},
            "delete": {"summary": "Kick a client: disconnect it (MQTT 5: DISCONNECT 0x98); "
                                  "with remove=1 delete its session too (admins).",
                       "operationId": "adminKick",
                       "parameters": [
                           _param("client", "Client identifier.", _STRING, required=True),
                           _param("remove", "Also delete the session.",
                                  {"type": "string", "enum": ["0", "1", "true", "false"],
                                   "default": "0"})],
                       "responses": {"204": {"description": "Disconnected (and removed)."},
                                     **_COMMON_ERRORS,
                                     "404": _error("No session of that client.")}},
        },
        "/admin/subscriptions": {"get": {
            "summary": "A page of every session's subscriptions, by filter then client id "
                       "(admins).",
            "operationId": "adminSubscriptions",
            "parameters": [
                _param("prefix", "Only filters starting with this.", _STRING), _LIMIT,
                _param("after", "The previous page's next (an opaque cursor).", _STRING)],
            "responses": {"200": _json("SubscriptionList", "One page."), **_COMMON_ERRORS},
        }},
        "/admin/retained": {
            "get": {"summary": "A page of retained topics matching a filter (admins).",
                    "operationId": "adminRetained",
                    "parameters": [
                        _param("topic", "Topic filter.", {"type": "string", "default": "#"}),
                        _LIMIT, _param("after", "The previous page's next.", _STRING)],
                    "responses": {"200": _json("RetainedTopics", "Sorted by topic, one page."),
                                  **_COMMON_ERRORS}},
            "delete": {"summary": "Delete one retained message (admins).",
                       "operationId": "adminDeleteRetained",
                       "parameters": [_param("topic", "Topic name.", _STRING, required=True)],
                       "responses": {"204": {"description": "Deleted (stored)."},
                                     **_COMMON_ERRORS,
                                     "404": _error("No retained message on that topic.")}},
        },
        "/admin/stats": {"get": {
            "summary": "Counters, gauges, top topics and the last minutes' rates (admins).",
            "operationId": "adminStats",
            "responses": {"200": _json("Stats", "The broker's figures now."), **_COMMON_ERRORS},
        }},
        "/admin/events": {"get": {
            "summary": "Server-Sent Events for the dashboard (admins): 'event: stats' once a "
                       "second (data: StatsEvent).",
            "operationId": "adminEvents",
            "responses": {"200": {"description": "A stream of stats events.", "content": {
                "text/event-stream": {"schema": _STRING}}}, **_COMMON_ERRORS},
        }},
        "/dashboard": {"get": {
            "summary": "The live dashboard (admins): /dashboard redirects to /dashboard/, "
                       "which serves the page; its files are /dashboard/dashboard.js and "
                       "/dashboard/dashboard.css.",
            "operationId": "dashboard",
            "responses": {"200": {"description": "The page.", "content": {
                "text/html": {"schema": _STRING}}},
                "302": {"description": "To /dashboard/.",
                        "headers": {"Location": {"schema": _STRING}},
                        "content": {"application/json": {"schema": _ref("Error")}}},
                **_COMMON_ERRORS},
        }},
        "/dashboard/dashboard.js": {"get": {
            "summary": "The dashboard's script (admins).", "operationId": "dashboardScript",
            "responses": {"200": {"description": "JavaScript.", "content": {
                "text/javascript": {"schema": _STRING}}}, **_COMMON_ERRORS}}},
        "/dashboard/dashboard.css": {"get": {
            "summary": "The dashboard's style sheet (admins).", "operationId": "dashboardStyle",
            "responses": {"200": {"description": "CSS.", "content": {
                "text/css": {"schema": _STRING}}}, **_COMMON_ERRORS}}},
        "/openapi.json": {"get": {
            "summary": "This document.",
            "operationId": "openapi",
            "security": [{}],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {"schema": {
                                      "type": "object"}}}},
                          "405": _COMMON_ERRORS["405"]},
        }},
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic",
                      "description": "User name and password, as an MQTT CONNECT sends them."},
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token, given to the authenticator as the password."},
        },
        "responses": {"NotFound": _error("No such path.")},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy)."""
    return json.loads(document_bytes())


@cache
def document_bytes() -> bytes:
    return (json.dumps(_DOCUMENT, indent=2) + "\n").encode("utf-8")


if __name__ == "__main__":
    import sys

    sys.stdout.write(document_bytes().decode("utf-8"))
