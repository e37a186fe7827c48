"""New connections' first reads, a CPU budget per reactor turn across all connections
(``core/admission.py``, issue 14): under a flood of new connections one turn handled
every ready socket's CONNECT (5-20 ms of CPU in the live fuzz) while connected
clients waited.  Sans-IO, on a Clock, with a CPU clock that charges each read."""

from __future__ import annotations

from mqtt_twisted.codec import ConnAck, Connect, Publish, encode
from mqtt_twisted.core.admission import ConnectGate
from mqtt_twisted.testing import FakeClient, make_broker

#: What each first read costs on the fake CPU clock, and the turn's budget: three a turn.
COST, BUDGET = 0.001, 0.0025


class FakeCPU:
    """A CPU clock that moves by COST at each reading: a handled read costs COST."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += COST
        return self.now


def gated():
    broker, clock = make_broker(connect_budget=BUDGET)
    broker.gate.cpu = broker.gate.wall = FakeCPU()  # (either clock: a read costs COST)
    return broker, clock


def connack(client: FakeClient) -> bool:
    return any(isinstance(p, ConnAck) for p in client.received())


def connect_bytes(client_id: str) -> bytes:
    return encode(Connect(client_id, 4, True, 0))


def test_a_turn_handles_first_reads_within_its_budget_the_rest_later_in_order() -> None:
    """Three CONNECTs fit the turn; the others wait (still reading: they sent nothing
    more) and are answered at the next turns, three a turn, in the order they came."""
    broker, clock = gated()
    clients = [FakeClient(broker) for _ in range(8)]
    for i, client in enumerate(clients):
        client.send_bytes(connect_bytes(f"c{i}"))
    answered = [connack(c) for c in clients]
    assert answered == [True] * 3 + [False] * 5
    assert all(c.transport.reading for c in clients)
    assert len(broker.gate) == 5
    clock.advance(0)  # (a Clock runs the calls each turn schedules for now as well)
    assert all(connack(c) for c in clients[3:])
    assert all(c.transport.reading for c in clients)
    assert len(broker.gate) == 0
    assert list(broker.sessions) == [f"c{i}" for i in range(8)]  # (in CONNECT order)


def test_waiting_connections_go_before_new_ones() -> None:
    """Once some wait, a new connection's read waits behind them even if the next
    turn's budget has room: nobody is overtaken."""
    broker, clock = gated()
    first = [FakeClient(broker) for _ in range(4)]
    for i, client in enumerate(first):
        client.send_bytes(connect_bytes(f"a{i}"))
    assert not connack(first[3])
    late = FakeClient(broker)
    late.send_bytes(connect_bytes("zz"))
    assert not connack(late)
    clock.advance(0)
    assert list(broker.sessions) == ["a0", "a1", "a2", "a3", "zz"]  # (in CONNECT order)
    assert connack(first[3]) and connack(late)


def test_bytes_read_while_waiting_are_kept_in_order() -> None:
    """A second read while waiting (the rest of the CONNECT, a PUBLISH) joins the held
    bytes, and the connection stops reading until its turn."""
    broker, clock = gated()
    for i in range(3):
        FakeClient(broker).send_bytes(connect_bytes(f"x{i}"))
    sub = FakeClient(broker)
    data = connect_bytes("late") + encode(Publish("t", b"1"))
    sub.send_bytes(data[:5])
    assert sub.transport.reading
    sub.send_bytes(data[5:])
    assert not sub.received()
    assert not sub.transport.reading
    clock.advance(0)
    assert connack(sub)
    assert sub.transport.reading
    assert sub.connection.client_id == "late"
    assert broker.stats.messages_received == 1


def test_connected_clients_are_not_gated() -> None:
    """With the turn's budget spent and connections waiting, a connected client's
    PUBLISH still goes through in that turn."""
    broker, _ = gated()
    sub, pub = FakeClient(broker), FakeClient(broker)
    sub.connect("sub")
    sub.subscribe("t")
    pub.connect("pub")
    FakeClient(broker).send_bytes(connect_bytes("w0"))  # (the turn's third)
    FakeClient(broker).send_bytes(connect_bytes("w1"))
    assert len(broker.gate) == 1
    pub.publish("t", b"now")
    assert [p.payload for p in sub.received() if isinstance(p, Publish)] == [b"now"]


def test_at_least_one_read_a_turn_however_costly() -> None:
    """A read that costs more than a whole budget is still handled, one a turn."""
    broker, _ = make_broker(connect_budget=BUDGET)
    broker.gate.cpu = broker.gate.wall = iter(x * 0.01 for x in range(1000)).__next__  # 10 ms
    clients = [FakeClient(broker) for _ in range(3)]
    for i, client in enumerate(clients):
        client.send_bytes(connect_bytes(f"big{i}"))
    assert [connack(c) for c in clients] == [True, False, False]
    turn = broker.gate._call
    turn.func()  # one turn, without the turns it schedules
    assert [connack(c) for c in clients[1:]] == [True, False]


def test_a_waiting_connection_that_closes_is_skipped() -> None:
    """Its CONNECT deadline passed (or the broker shut down) while it waited: its bytes
    are dropped, nothing is answered, the others go on."""
    broker, clock = gated()
    for i in range(3):
        FakeClient(broker).send_bytes(connect_bytes(f"y{i}"))
    gone, next_ = FakeClient(broker), FakeClient(broker)
    gone.send_bytes(connect_bytes("gone"))
    next_.send_bytes(connect_bytes("next"))
    gone.drop()
    clock.advance(0)
    assert not gone.received() and "gone" not in broker.sessions
    assert connack(next_)
    assert len(broker.gate) == 0


def test_no_gate_with_a_zero_budget() -> None:
    """``connect_budget=0`` (make_broker's default: a Clock has no turns of its own)."""
    broker, _ = make_broker()
    clients = [FakeClient(broker) for _ in range(50)]
    assert all(c.connect(f"n{i}") for i, c in enumerate(clients))
    assert len(broker.gate) == 0


def test_the_gate_alone_on_a_clock() -> None:
    """What the gate asks of a connection: state, dataReceived, throttle, unthrottle."""
    from twisted.internet.task import Clock

    class Conn:
        state = 0

        def __init__(self, gate: ConnectGate) -> None:
            self.gate, self.got, self.paused = gate, [], 0

        def dataReceived(self, data: bytes) -> None:
            if not self.gate.takes(self, data):
                self.got.append(data)

        def throttle(self) -> None:
            self.paused += 1

        def unthrottle(self) -> None:
            self.paused -= 1

    clock = Clock()
    cpu = FakeCPU()
    gate = ConnectGate(clock, BUDGET, cpu, cpu)
    conns = [Conn(gate) for _ in range(5)]
    for i, conn in enumerate(conns):
        conn.dataReceived(b"%d" % i)
    assert [c.got for c in conns] == [[b"0"], [b"1"], [b"2"], [], []]
    assert [c.paused for c in conns] == [0] * 5  # (waiting, but nothing more came)
    conns[4].dataReceived(b"+")
    assert [c.paused for c in conns] == [0, 0, 0, 0, 1]
    clock.advance(0)
    assert [c.got for c in conns[3:]] == [[b"3"], [b"4+"]]
    assert [c.paused for c in conns] == [0] * 5


def test_a_connect_waiting_for_its_turn_is_not_cut_off() -> None:
    """A whole CONNECT waiting here when its CONNECT deadline passes gets time for its
    answer (it was read; the broker is slow, not the client); a socket that sent part
    of one is cut off as before."""
    broker, clock = gated()
    clients = [FakeClient(broker) for _ in range(5)]
    for i, client in enumerate(clients[:4]):
        client.send_bytes(connect_bytes(f"c{i}"))
    clients[4].send_bytes(connect_bytes("c4")[:3])  # a CONNECT's first bytes only
    assert len(broker.gate) == 2
    for client in clients[3:]:  # (their deadline, before the gate's next turn)
        client.connection.deadline_passed()
    assert not clients[3].transport.closed
    assert clients[4].transport.closed
    clock.advance(0)
    assert connack(clients[3])


def test_a_turn_within_its_budget_renews_it_at_its_end_without_a_call() -> None:
    """Under a loop that runs the turn's end itself (``turns.handling_events``, the
    lean epoll loop), CONNECTs that fit the budget schedule nothing on the clock; the
    turn's end gives the next turn a whole budget."""
    from mqtt_twisted import turns

    broker, clock = gated()
    turns.handling_events(clock)
    try:
        clients = [FakeClient(broker) for _ in range(2)]
        for i, client in enumerate(clients):
            client.send_bytes(connect_bytes(f"r{i}"))
        assert all(connack(c) for c in clients)
        assert broker.gate._call is None
        assert not [c for c in clock.getDelayedCalls() if c.func is turns._run]
        assert broker.gate.spent > 0
    finally:
        turns.run_due(clock)  # (the turn's end)
    assert broker.gate.spent == 0
    later = [FakeClient(broker) for _ in range(3)]  # a whole budget again: three
    for i, client in enumerate(later):
        client.send_bytes(connect_bytes(f"s{i}"))
    assert [connack(c) for c in later] == [True] * 3


def test_the_wall_clock_times_the_first_half_of_a_budget() -> None:
    """The CPU clock (a system call a reading) is read only once the turn's first reads
    have taken half the budget by the wall clock, which never runs slower; a turn whose
    wall time stretches (a loaded machine) admits fewer, never more."""
    from twisted.internet.task import Clock

    class Counted(FakeCPU):
        def __init__(self, cost: float) -> None:
            super().__init__()
            self.readings, self.cost = 0, cost

        def __call__(self) -> float:
            self.readings += 1
            self.now += self.cost
            return self.now

    class Conn:
        state = 0

        def __init__(self) -> None:
            self.got = 0

        def dataReceived(self, data: bytes) -> None:
            if not gate.takes(self, data):
                self.got += 1

        def throttle(self) -> None:
            pass

    cpu, wall = Counted(COST), Counted(COST)
    gate = ConnectGate(Clock(), BUDGET, cpu, wall)
    conns = [Conn() for _ in range(5)]
    for conn in conns:
        conn.dataReceived(b"x")
    assert [c.got for c in conns] == [1, 1, 1, 0, 0]
    assert (wall.readings, cpu.readings) == (4, 2)  # (two reads by the wall, one by CPU)
    cpu, slow_wall = Counted(COST), Counted(2 * COST)  # (wall time stretched twice)
    gate = ConnectGate(Clock(), BUDGET, cpu, slow_wall)
    conns = [Conn() for _ in range(5)]
    for conn in conns:
        conn.dataReceived(b"x")
    assert [c.got for c in conns] == [1, 1, 0, 0, 0]


def test_a_gate_turn_runs_the_work_its_connects_leave_as_it_ends() -> None:
    """What the CONNECTs of a gate's turn leave for the turn's end (CONNACKs, log lines:
    ``turns.after_turn``) runs as that turn ends: no ``callLater(0)`` of its own, a
    reactor pass later; the budget's renewal still waits for the next turn's end."""
    from twisted.internet.task import Clock

    from mqtt_twisted import turns

    clock = Clock()
    cpu = FakeCPU()
    gate = ConnectGate(clock, BUDGET, cpu, cpu)
    done: list[bytes] = []

    class Conn:
        state = 0

        def dataReceived(self, data: bytes) -> None:
            if not gate.takes(self, data):
                turns.after_turn(clock, done.append, data)

    turns.handling_events(clock)  # (a poll's events: three fit, five wait)
    for i in range(8):
        Conn().dataReceived(b"%d" % i)
    turns.run_due(clock)
    assert done == [b"0", b"1", b"2"]
    call = gate._call
    func, args = call.func, call.args
    call.cancel()
    func(*args)  # (the reactor's next pass: the gate's turn, three more)
    assert done == [b"0", b"1", b"2", b"3", b"4", b"5"]
    assert not [c for c in clock.getDelayedCalls() if c.func is turns._run]
    assert gate._call is not None and len(gate) == 2
    clock.advance(0)  # (the last two, then the renewal at the end of a turn after)
    assert len(done) == 8 and len(gate) == 0 and not gate._renewing and gate.spent == 0
