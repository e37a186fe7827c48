"""Turn bench/compare.py's result lines into the docs/benchmarks.md section and its plots.

Kept apart from the runner so the page can be regenerated from a saved ``results.jsonl``
without rerunning anything::

    python bench/report.py bench/results/<stamp>   # rewrites the docs section and plots
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
DISTURBED_PCT = 25.0  # % of the machine used by other processes during a measurement
LABELS = {"ours": "mqtt-twisted", "mosquitto": "Mosquitto", "aedes": "aedes", "amqtt": "amqtt",
          "nats": "nats-server"}

# (scenario, key, row label, unit kind, higher is better)
METRICS = [
    ("fan-in", "delivered_per_s", "fan-in 4→1, QoS 0: delivered msg/s", "rate", True),
    ("fan-in", "delivered_pct", "fan-in: % delivered", "pct", True),
    ("fan-out", "delivered_per_s", "fan-out 1→10, QoS 0: deliveries/s", "rate", True),
    ("fan-out", "delivered_pct", "fan-out: % delivered", "pct", True),
    ("qos1", "delivered_per_s", "QoS 1 (window 100): delivered msg/s", "rate", True),
    ("qos2", "delivered_per_s", "QoS 2 (window 100): delivered msg/s", "rate", True),
    ("latency", "p50_ms", "latency at 1,000 msg/s: p50 ms", "ms", False),
    ("latency", "p99_ms", "latency: p99 ms", "ms", False),
    ("latency", "p999_ms", "latency: p99.9 ms", "ms", False),
    ("latency", "max_ms", "latency: max ms", "ms", False),
    ("many-subscriptions", "subscriptions_per_s", "100k subscriptions: subscribed/s", "rate",
     True),
    ("many-subscriptions", "subscribe_cpu_us", "broker CPU µs per subscription", "us", False),
    ("many-subscriptions", "base_per_s", "publish msg/s, 300 filters", "rate", True),
    ("many-subscriptions", "publish_per_s", "publish msg/s, 100k filters", "rate", True),
    ("many-subscriptions", "match_cost_us", "extra µs per publish for 100k filters", "us", False),
    ("connections", "connects_per_s", "connections: connects/s (first 5,000)", "rate", True),
    ("connections", "held", "connections held (of fd limit - 100)", "int", True),
    ("connections", "rss_per_conn_kib", "broker RSS per connection, KiB (5,000)", "kib", False),
    ("connections", "rss_per_conn_max_kib", "broker RSS per connection, KiB (all)", "kib", False),
    ("retained", "store_s", "100k retained: seconds to store", "s", False),
    ("retained", "fetch_s", "100k retained: seconds until # has all", "s", False),
    ("publisher-disconnect", "lost", "publisher closes at once: messages lost", "int", False),
]
#: Our own scenarios (bench/ourscen.py: no peer does them comparably), each a ratio against
#: ourselves in the same run: (scenario, key, row label, unit kind, issue 19's target, met);
#: ``met`` None: a figure shown beside the target's, with none of its own.  A label may name
#: fields of the scenario's first line ("{queued:,}").
OWN: list[tuple[str, str, str, str, str, Any]] = [
    ("redis-qos1", "redis_ratio", "QoS 1 (window 100): Redis store ÷ memory store, msg/s",
     "ratio", "≥ 0.5", lambda v: v >= 0.5),
    ("redis-qos1", "redis_cpu_ratio", "… the same by CPU per message: memory store's broker "
     "÷ Redis store's broker + redis-server", "ratio", "≥ 0.5", lambda v: v >= 0.5),
    ("redis-qos1", "memory_per_s", "memory store: QoS 1 msg/s", "rate", "", None),
    ("redis-qos1", "redis_per_s", "Redis store: QoS 1 msg/s", "rate", "", None),
    ("redis-qos1", "memory_broker_us", "memory store: broker CPU µs/msg", "us", "", None),
    ("redis-qos1", "redis_broker_us", "Redis store: broker CPU µs/msg", "us", "", None),
    ("redis-qos1", "redis_server_us", "Redis store: redis-server CPU µs/msg", "us", "", None),
    ("redis-connack", "connack_ms", "Redis store: ms to CONNACK, a session with {queued:,} "
     "queued QoS 1 messages (median of {reconnects} reconnects)", "ms", "< 10",
     lambda v: v < 10),
    ("redis-connack", "connack_max_ms", "… slowest of the reconnects, ms", "ms", "", None),
    ("cluster-spread", "linear_2", "spread, 2 nodes: fraction of linear (node CPU/msg of "
     "1 node ÷ of 2)", "ratio", "≥ 0.8", lambda v: v >= 0.8),
    ("cluster-spread", "linear_3", "spread, 3 nodes: fraction of linear", "ratio", "≥ 0.8",
     lambda v: v >= 0.8),
    ("cluster-spread", "cpu_us_1", "spread, 1 node: node CPU µs/msg (QoS 1)", "us", "", None),
    ("cluster-spread", "cpu_us_2", "spread, 2 nodes: node CPU µs/msg, both nodes", "us", "",
     None),
    ("cluster-spread", "cpu_us_3", "spread, 3 nodes: node CPU µs/msg, all nodes", "us", "",
     None),
    ("cluster-spread", "lost", "spread: messages lost ({messages:,} a size)", "int", "0",
     lambda v: v == 0),
    ("cluster-cross", "cross_ratio", "QoS 0: across 2 nodes ÷ on 1 node, msg/s", "ratio",
     "≥ 0.8", lambda v: v >= 0.8),
    ("cluster-cross", "cross_cpu_ratio", "… the same by node CPU per message: 1 node's ÷ "
     "both nodes'", "ratio", "≥ 0.8", lambda v: v >= 0.8),
    ("cluster-cross", "single_per_s", "QoS 0, 1 node: msg/s", "rate", "", None),
    ("cluster-cross", "cross_per_s", "QoS 0, node A → node B: msg/s", "rate", "", None),
    ("cluster-cross", "single_cpu_us", "QoS 0, 1 node: node CPU µs/msg", "us", "", None),
    ("cluster-cross", "cross_cpu_us", "QoS 0, A → B: node CPU µs/msg, both nodes", "us", "",
     None),
    ("coap-non", "coap_each_cpu_ratio", "CoAP NON POST ÷ MQTT QoS 0 one PUBLISH a send, by "
     "broker CPU per message", "ratio", "≥ 0.5", lambda v: v >= 0.5),
    ("coap-non", "coap_each_rate_ratio", "… by delivered rate", "ratio", "≥ 0.5",
     lambda v: v >= 0.5),
    ("coap-non", "coap_batch_cpu_ratio", "CoAP NON POST ÷ MQTT QoS 0 in 64 KiB sends (as "
     "fan-in), by broker CPU per message", "ratio", "≥ 0.5", lambda v: v >= 0.5),
    ("coap-non", "coap_batch_rate_ratio", "… by delivered rate", "ratio", "≥ 0.5",
     lambda v: v >= 0.5),
    ("coap-non", "coap_non_per_s", "CoAP NON POSTs delivered/s (unpaced, C sender)", "rate", "",
     None),
    ("coap-non", "coap_broker_us", "CoAP NON: broker CPU µs per delivered message", "us", "",
     None),
]

# The throughput plot: (scenario, key, label)
PLOTTED = [("fan-in", "delivered_per_s", "fan-in\nmsg/s"),
           ("fan-out", "delivered_per_s", "fan-out\ndeliveries/s"),
           ("qos1", "delivered_per_s", "QoS 1\nmsg/s"), ("qos2", "delivered_per_s", "QoS 2\nmsg/s"),
           ("many-subscriptions", "publish_per_s", "100k subs\npublish/s"),
           ("connections", "connects_per_s", "connects/s")]


def fmt(value: float | None, kind: str) -> str:
    """A figure the way a reader scans it: 139.6k, 0.093, 1.5, 19,900."""
    if value is None:
        return "—"
    if kind == "rate":
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}"
        return f"{value:.3g}"
    if kind == "ratio":  # 0.64, 0.02, 0.0042: two digits that mean something
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.2g}"
    if kind == "pct":
        return f"{value:.4g}"
    if kind == "int":
        return f"{value:,.0f}"
    if kind in ("ms", "us", "s", "kib"):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def summary(line: dict) -> str:
    """One log line for a result: status and its main figures."""
    status = "ok  " if line.get("ok") else "FAIL"
    if line.get("skipped"):
        return (f"{line.get('broker', '?'):9} {line.get('scenario', '?'):21} skip "
                f"{line['skipped']}")
    keys = [k for s, k, *_ in [*METRICS, *OWN] if s == line.get("scenario")]
    if line.get("scenario") == "ceiling":
        keys = ["fanin_per_s", "fanout_deliveries_per_s"]
    figures = " ".join(f"{k}={line[k]}" for k in keys if line.get(k) is not None)
    extra = f" error={line['error'][:200]!r}" if line.get("error") else ""
    return f"{line.get('broker', '?'):9} {line.get('scenario', '?'):21} {status} {figures}{extra}"


def values(lines: list[dict], broker: str, scenario: str, key: str) -> list[float]:
    return [ln[key] for ln in lines if ln.get("broker") == broker
            and ln.get("scenario") == scenario and isinstance(ln.get(key), int | float)]


def median(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def cell(vals: list[float], kind: str) -> str:
    if not vals:
        return "—"
    text = fmt(median(vals), kind)
    if len(vals) > 1 and min(vals) != max(vals):
        text += f" ({fmt(min(vals), kind)}-{fmt(max(vals), kind)})"
    return text


def failures(lines: list[dict]) -> list[dict]:
    return [ln for ln in lines if not ln.get("ok") and ln.get("scenario") != "ceiling"]


def results_table(lines: list[dict], brokers: list[str]) -> list[str]:
    out = ["| scenario | " + " | ".join(LABELS[b] for b in brokers) + " |",
           "|---|" + "---|" * len(brokers)]
    for scenario, key, label, kind, _ in METRICS:
        row = []
        for b in brokers:
            text = cell(values(lines, b, scenario, key), kind)
            runs = [ln for ln in lines if ln.get("broker") == b and ln.get("scenario") == scenario]
            bad = sum(1 for ln in runs if not ln.get("ok"))
            if bad and key == METRICS_FIRST[scenario]:
                text += f" ✗{bad}/{len(runs)}"
            row.append(text)
        out.append(f"| {label} | " + " | ".join(row) + " |")
    return out


METRICS_FIRST = {}
for _s, _k, *_ in METRICS:
    METRICS_FIRST.setdefault(_s, _k)


def ratio_table(lines: list[dict], brokers: list[str]) -> list[str]:
    others = [b for b in brokers if b != "ours"]
    if "ours" not in brokers or not others:
        return []
    out = ["| ours ÷ … | " + " | ".join(LABELS[b] for b in others) + " | better when |",
           "|---|" + "---|" * (len(others) + 1)]
    for scenario, key, label, _kind, higher in METRICS:
        if key in ("delivered_pct", "held", "lost"):
            continue
        mine = median(values(lines, "ours", scenario, key))
        row = []
        for b in others:
            theirs = median(values(lines, b, scenario, key))
            row.append(ratio(mine, theirs))
        out.append(f"| {label} | " + " | ".join(row) + f" | {'higher' if higher else 'lower'} |")
    return out


def ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or not theirs or mine < 0 or theirs < 0:  # a negative cost is noise
        return "—"
    r = mine / theirs
    return f"{r:,.0f}x" if abs(r) >= 100 else f"{r:.2f}x"


def own_table(lines: list[dict]) -> list[str]:
    """Our own scenarios' figures, the target beside each (scenarios not run: no rows)."""
    ran = {ln.get("scenario") for ln in lines if ln.get("broker") == "ours"}
    rows = [r for r in OWN if r[0] in ran]
    if not rows:
        return []
    out = ["| figure (ours) | median (min-max) | target | met |", "|---|---|---|---|"]
    first_row = {}
    for scenario, key, label, kind, target, met in rows:
        first_row.setdefault(scenario, key)
        runs = [ln for ln in lines if ln.get("broker") == "ours"
                and ln.get("scenario") == scenario]
        vals = values(lines, "ours", scenario, key)
        text = cell(vals, kind)
        bad = sum(1 for ln in runs if not ln.get("ok"))
        if bad and first_row[scenario] == key:
            text += f" ✗{bad}/{len(runs)}"
        done = [ln for ln in runs if not ln.get("skipped")]
        if not done:
            text = "not measured"
        verdict = "" if met is None or not vals else ("yes" if met(median(vals)) else "**no**")
        try:
            label = label.format(**done[0])
        except (KeyError, ValueError, IndexError):  # not run: its sizes unknown
            label = re.sub(r"\{[^}]*\}", "N", label)
        out.append(f"| {label} | {text} | {target} | {verdict} |")
    return out


def disturbed_notes(lines: list[dict]) -> list[str]:
    """Measurements during which other processes used much of the (shared) machine."""
    hits = [f"{LABELS.get(ln['broker'], ln['broker'])} {ln['scenario']} (run {ln['run'] + 1}: "
            f"{ln['foreign_cpu_pct']:.0f} %)" for ln in lines
            if ln.get("foreign_cpu_pct", 0) > DISTURBED_PCT]
    if not hits:
        return []
    return [f"Disturbed (other processes took over {DISTURBED_PCT:.0f} % of the machine even "
            "after one retry; read these with care): " + ", ".join(hits) + "."]


def why_failed(ln: dict) -> str:
    """One failed measurement in a few words."""
    if ln.get("error"):
        return ln["error"].strip().replace("\n", " ")[:240]
    if ln.get("drained") is False:
        left = ln.get("undelivered")
        return ("still delivering at the time limit"
                + (f" ({left:,} not yet delivered)" if left is not None else ""))
    if ln.get("scenario") == "publisher-disconnect":
        parts = [f"{ln[f'lost_qos{q}_{v}']:,} QoS {q} after {'DISCONNECT' if v == 'disconnect' else 'a reset'}"
                 for v in ("disconnect", "reset") for q in (0, 1) if ln.get(f"lost_qos{q}_{v}")]
        return "lost " + ", ".join(parts)
    if ln.get("lost"):
        sent = ln.get("sent", 0) * (10 if ln["scenario"] == "fan-out" else 1)
        return f"lost {ln['lost']:,} of {sent or ln.get('messages', 0):,}"
    if "held" in ln:
        return f"held {ln['held']:,} of {ln.get('target'):,} connections"
    return "failed"


def failure_notes(lines: list[dict]) -> list[str]:
    """Failed measurements grouped by broker and scenario."""
    groups: dict[tuple[str, str], list[str]] = {}
    for ln in failures(lines):
        groups.setdefault((ln["broker"], ln["scenario"]), []).append(
            f"run {ln.get('run', 0) + 1}: {why_failed(ln)}")
    order = {s: i for i, (s, *_) in enumerate(METRICS)}
    keys = sorted(groups, key=lambda k: (list(LABELS).index(k[0]) if k[0] in LABELS else 9,
                                         order.get(k[1], 99)))
    return [f"- {LABELS.get(b, b)}, {s}: " + "; ".join(groups[b, s]) for b, s in keys]


#: In the section instead of the plots when matplotlib is missing: plots are optional, and
#: nothing installs it behind the user's back.
NO_PLOTS = ("Plots skipped: matplotlib is not installed (install it, then `python "
            "bench/report.py bench/results/<stamp>` draws them).")


def plot(lines: list[dict], brokers: list[str], imgdir: Path) -> list[str]:
    """Throughput bars (log scale, min-max whiskers) and latency CDFs; return file names
    (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgdir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(brokers)
    for i, b in enumerate(brokers):
        meds, lo, hi = [], [], []
        for scenario, key, _ in PLOTTED:
            vals = values(lines, b, scenario, key)
            m = median(vals) or 0
            meds.append(m)
            lo.append(m - min(vals) if vals else 0)
            hi.append(max(vals) - m if vals else 0)
        xs = [x + (i - (len(brokers) - 1) / 2) * width for x in range(len(PLOTTED))]
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=LABELS[b])
    ax.set_xticks(range(len(PLOTTED)), [label for *_, label in PLOTTED])
    ax.set_yscale("log")
    ax.set_ylabel("per second (log scale; median, min-max)")
    ax.set_title("Throughput per scenario")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(imgdir / "bench-throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for b in brokers:
        runs = [ln for ln in lines if ln.get("broker") == b and ln.get("scenario") == "latency"
                and ln.get("cdf_ms")]
        if not runs:
            continue
        runs.sort(key=lambda ln: ln["p99_ms"])
        cdf = runs[len(runs) // 2]["cdf_ms"]  # the run with the median p99
        ax.plot(cdf, range(len(cdf)), label=f"{LABELS[b]} (p99 {runs[len(runs) // 2]['p99_ms']:.3g} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("send → receive, ms (log scale)")
    ax.set_ylabel("percentile")
    ax.set_title("Latency distribution at 1,000 msg/s (QoS 0, run with the median p99)")
    ax.grid(which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(imgdir / "bench-latency.png", dpi=110)
    plt.close(fig)
    return ["bench-throughput.png", "bench-latency.png"]


def markdown(lines: list[dict], info: dict, brokers: list[str], imgdir: Path) -> str:
    """The whole generated section, markers included."""
    ceiling = [ln for ln in lines if ln.get("scenario") == "ceiling"]
    fin = values(ceiling, "none", "ceiling", "fanin_per_s")
    fout = values(ceiling, "none", "ceiling", "fanout_deliveries_per_s")
    images = plot(lines, brokers, imgdir)
    busy = info.get("background_cpu_pct", [])
    out = [
        BEGIN,
        "## Broker comparison",
        "",
        f"Generated by `{info.get('command', 'python bench/compare.py')}` "
        "(bench/loadgen.py against each broker on "
        "127.0.0.1, each broker restarted for every scenario, brokers interleaved, "
        f"{info.get('runs')} run(s); {'QUICK smoke-test sizes, ' if info.get('quick') else ''}"
        f"{info.get('started')}, {info.get('duration_min')} min). Cells: median "
        "(min-max) over the runs; ✗n/m: n of m runs failed (see the notes).",
        "",
        *results_table(lines, brokers),
        "",
        f"Load generator ceiling (no broker: publishers into a counting sink / through a "
        f"byte-copying relay): fan-in {cell(fin, 'rate')} msg/s, fan-out {cell(fout, 'rate')} "
        "deliveries/s.",
        "",
    ]
    ratios = ratio_table(lines, brokers)
    if ratios:
        out += ["### Ours relative to the others (ratio of medians)", "", *ratios, ""]
    own = own_table(lines)
    if own:
        out += ["### Our own scenarios: ratios against ourselves in the same run", "",
                "No peer has a Redis store, a cluster or a CoAP gateway that compares, so "
                "issue 19's targets for these are ratios of our broker against itself, "
                "measured side by side in each run (bench/ourscen.py; the scenarios are "
                "described below). Medians of the runs' own ratios.", "", *own, ""]
    notes = failure_notes(lines)
    if notes:
        out += ["### Failures and losses", "", *notes, ""]
    skipped = {(ln["broker"], ln["scenario"]): ln["skipped"] for ln in lines if ln.get("skipped")}
    if skipped:
        out += ["Not measured: " + "; ".join(f"{LABELS.get(b, b)}, {s}: {why}"
                                             for (b, s), why in skipped.items()) + ".", ""]
    out += [*disturbed_notes(lines), ""] if disturbed_notes(lines) else []
    if images:
        out += [f"![throughput per scenario](img/{images[0]})", "",
                f"![latency distribution](img/{images[1]})", ""]
    else:
        out += [NO_PLOTS, ""]
    out += ["### Machine", "",
            f"- CPU: {info.get('cpu')}, {info.get('cores')} cores; RAM {info.get('memory')}; "
            f"kernel {info.get('kernel')}; Python {info.get('python')}; "
            f"descriptor limit {info.get('fd_limit')}",
            *(f"- {LABELS[b]}: {v}" for b, v in info.get("versions", {}).items()),
            f"- CPU busy with other work before each run: {', '.join(map(str, busy))} % "
            "(the machine is shared; see the retries and notes above)",
            "", "### Broker settings", "",
            *(f"- {LABELS[b]}: {v}" for b, v in info.get("settings", {}).items()),
            "", "### Scenarios", "",
            "- fan-in: 4 publishers (64-byte QoS 0 payloads, 64 KiB batched writes) → 1 "
            "subscriber on `bench/#`, 5 s of publishing, then up to 15 s to drain.",
            "- fan-out: 1 publisher → 10 subscribers on one topic, QoS 0.",
            "- QoS 1 / QoS 2: 1 publisher keeping 100 messages unacknowledged → 1 subscriber "
            "at the same QoS that acknowledges; how many messages each broker keeps in flight "
            "to the subscriber is in its settings above (ours: `--max-inflight`, Mosquitto: "
            "`max_inflight_messages`).",
            "- latency: 1,000 msg/s paced for 10 s, QoS 0, timestamp in the payload.",
            "- many subscriptions: 100 clients hold 300 matching filters, publish rate; then "
            "100,000 filters (⅓ exact, ⅓ `+`, ⅓ `#`), publish rate again; each publish matches "
            "exactly one filter. The extra µs per publish is the cost of the larger index.",
            "- connections: 5,000 idle connections, then up to the descriptor limit; "
            "RSS from /proc/PID/status.",
            "- retained: 100,000 retained messages, then a `#` subscriber.",
            "- publisher disconnect: 10,000 QoS 0 + 10,000 QoS 1 messages, then (a) DISCONNECT "
            "and close, (b) close with PUBACKs unread (the kernel sends a reset; every byte "
            "stays readable by the broker); a broker that drops any fails.",
            *own_scenarios(lines, info),
            END]
    return "\n".join(out) + "\n"


def own_scenarios(lines: list[dict], info: dict) -> list[str]:
    """The Scenarios list's lines for our own scenarios that ran."""
    ran = {ln.get("scenario") for ln in lines if ln.get("broker") == "ours"}
    text = {
        "redis-qos1": "redis-qos1 (ours only): bench/bench_store.py's QoS 1 run, a persistent "
        "subscriber acknowledging each message and a publisher keeping 100 unacknowledged, on "
        "the memory store and then on the Redis store (a redis-server of its own, "
        "`appendonly yes`, `appendfsync everysec`), the order alternating between runs.",
        "redis-connack": "redis-connack (ours only): bench_store.py's `--connacks`: a "
        "persistent session with that many QoS 1 messages queued on the Redis store "
        "reconnects without acknowledging, so that every CONNACK finds the whole queue.",
        "cluster-spread": "cluster-spread (ours only): bench/cluster.py's spread on 1, 2 and 3 "
        "clustered nodes (one redis-server), a QoS 1 publisher (window 100) and a subscriber "
        "on each node, every publisher spreading its messages over every subscriber, so "
        "(n-1)/n cross nodes; node CPU per message from /proc, and 1 node's over n nodes' is "
        "the fraction of linear scaling (issue 16's measure).",
        "cluster-cross": "cluster-cross (ours only): bench/cluster.py's QoS 0 run (the "
        "publisher at most 20,000 messages ahead of the subscriber, 2,000,000 sent), "
        "publisher and subscriber "
        "on one node without `--cluster`, then publisher on node A and subscriber on node B "
        "of a two-node cluster; both on the Redis store.",
        "coap-non": "coap-non (ours only): bench/coap_non.py: CoAP NON POSTs (a C sender, "
        "unpaced; UDP drops what the broker does not read) and MQTT QoS 0 from one "
        "connection, one PUBLISH a send and in 64 KiB sends, interleaved in rounds through "
        "one broker into one MQTT subscriber; its printed ratios (bench/ourscen.py's `COAP`).",
    }
    out = [f"- {text[s]}" for s in text if s in ran]
    if out and info.get("redis"):
        out.append(f"- Our own scenarios' Redis: {info['redis']}.")
    return out


def write_section(doc: Path, section: str) -> None:
    """Replace the marked section of ``doc`` (create or append it when absent)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Rewrite docs/benchmarks.md's comparison section (and its plots) from "
        "the results of one `bench/compare.py` run.")
    parser.add_argument("results", type=Path, help="bench/results/<stamp>, as compare.py printed")
    outdir = parser.parse_args(argv).results
    if not (outdir / "results.jsonl").is_file() or not (outdir / "machine.json").is_file():
        parser.error(f"{outdir} holds no results.jsonl and machine.json of a compare.py run")
    lines = [json.loads(x) for x in (outdir / "results.jsonl").read_text().splitlines() if x]
    info = json.loads((outdir / "machine.json").read_text())
    brokers = [b for b in LABELS if any(ln.get("broker") == b for ln in lines)]
    root = Path(__file__).resolve().parent.parent
    write_section(root / "docs" / "benchmarks.md",
                  markdown(lines, info, brokers, root / "docs" / "img"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
