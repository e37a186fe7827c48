"""User-space instructions per subscription of a broker, end to end, counted by callgrind.

``bench/compare.py``'s subscribe rate and ``subscribe_cpu_us`` move with the load of
the shared machine more than one change to the SUBSCRIBE path is worth.  This counts
instructions instead: the broker (ours from ``--checkout``, as ``twistd -n mqttbroker``
with compare.py's options; or Mosquitto with compare.py's configuration) runs under
``valgrind --tool=callgrind`` with instrumentation off; ``--clients`` clients connect
and subscribe to their first three filters (as ``loadgen``'s many-subscriptions
scenario does before its base phase); then only while the clients send the rest of
their filters in SUBSCRIBEs of 100 and read their SUBACKs are instructions counted
(everything the broker runs: the reactor, the reads, the decoder, the grant, the
tree, the SUBACK writes, the collector; not the kernel's work).  The filters are
``loadgen.many_filters``' (a third exact, a third ``+``, a third ``#``).

    python bench/subscribe_callgrind.py [--clients 20] [--filters 1000] [--checkout DIR]
    python bench/subscribe_callgrind.py --broker mosquitto

It prints one JSON line per run with the instructions per subscription (``Ir``) and
keeps the callgrind output (``callgrind_annotate FILE`` for where they go) under
``--keep DIR`` if given.  Valgrind slows the broker about fifty times: a run of 20 x
1,000 filters takes about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import conn_memory  # noqa: E402
import loadgen  # noqa: E402

from mqtt_twisted.loadgen.roles import SubscriberRole  # noqa: E402


class MosquittoAsItsStarter(compare.Mosquitto):
    """compare.py's Mosquitto, kept as the user who starts it: started as root it
    would switch to its own user, whom ``callgrind_control`` (run as root) then waits
    on for ever."""

    CONF = [*compare.Mosquitto.CONF, "user root"] if os.geteuid() == 0 else compare.Mosquitto.CONF


def broker_of(name: str, checkout: Path) -> compare.Broker:
    if name == "mosquitto":
        return MosquittoAsItsStarter("mosquitto", "Mosquitto")
    ours = conn_memory.OursAt("ours", "mqtt-twisted")
    ours.checkout = checkout.resolve()
    return ours


def instructions_per_subscription(broker: compare.Broker, clients: int, filters: int,
                                  keep: Path | None) -> dict:
    """Start ``broker`` under callgrind; count the SUBSCRIBEs of ``clients`` x
    ``filters`` filters (less the three each client subscribed first)."""
    port = compare.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sub-callgrind-"))
    out = workdir / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", *broker.command(port, workdir)]
    with open(workdir / "broker.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=broker.cwd(), env=broker.env(), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:  # (start-up under valgrind takes a while)
            try:
                compare.open_client(port, "probe", timeout=2.0).close()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the broker did not start: see {workdir}/broker.log") from None
                time.sleep(1)
        table = [loadgen.many_filters(c, filters) for c in range(clients)]
        role = SubscriberRole(port, None, "cg", None)  # type: ignore[arg-type]
        role.connect(clients)
        first = role.subscribe([t[0] for t in table], 0, timeout=600)
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        rest = role.subscribe([t[1] for t in table], 0, timeout=1200)
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
        for sock in role.socks:
            sock.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    counted, kept = 0, None
    for name in glob.glob(f"{out}*"):
        with open(name) as f:
            for line in f:
                if line.startswith("totals:"):
                    total = int(line.split()[1])
                    if total > counted:
                        counted, kept = total, name
    if keep is not None and kept is not None:
        keep.mkdir(parents=True, exist_ok=True)
        kept = shutil.copy(kept, keep / f"callgrind.{broker.name}.{os.getpid()}.{time.time():.0f}")
    added = sum(len(t[1]) for t in table)
    if first["refused"] or rest["refused"]:
        raise SystemExit(f"refused: {first['refused'] + rest['refused']} filters")
    return {"subscriptions": added, "instructions_per_subscription": round(counted / added),
            "callgrind_out": str(kept) if keep is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["ours", "mosquitto"], default="ours")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--filters", type=int, default=1000, help="filters per client")
    parser.add_argument("--checkout", type=Path, default=BENCH.parent,
                        help="run our broker from this tree (default: this one)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="copy the callgrind output here")
    args = parser.parse_args()
    broker = broker_of(args.broker, args.checkout)
    for run in range(args.runs):
        res = instructions_per_subscription(broker, args.clients, args.filters, args.keep)
        print(json.dumps({"run": run, "broker": args.broker,
                          "checkout": str(args.checkout) if args.broker == "ours" else None,
                          "clients": args.clients, **res}), flush=True)


if __name__ == "__main__":
    main()
