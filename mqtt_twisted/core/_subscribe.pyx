# cython: language_level=3, boundscheck=False, wraparound=False, binding=True
"""Compiled twins of the SUBSCRIBE path's loops (optional; see docs/speedups.md).

The pure functions are the specification: ``topic_tree.insert`` (a SUBSCRIBE's
filters into the topic tree), ``control.grant`` (the loop over a SUBSCRIBE's filters:
SUBACK codes, the options records, the quota), ``control.topic_filters``,
``delivery.wanted`` (which granted filters' retained messages are looked up) and
``grant.usual_filters`` (whether a packet's filters need no check one by one).
Each one here builds the same tree, lists, dicts and records, and raises the same
errors; tests/test_subscribe_speedups.py compares the two.

What Python cannot do and these do: keep containers that cannot be part of a
reference cycle off the cyclic garbage collector's lists (``PyObject_GC_UnTrack``),
so that the collections a burst of SUBSCRIBEs triggers do not walk every subscription
made since the last one.  The options records hold atoms only; a granted tuple holds a
filter, a record and a bool; a leaf or node is kept off the lists while everything in
it is off them (CPython tracks a dict as soon as any container goes in, so ``_set``
untracks it again when what went in is untracked).  A record made elsewhere (a
store's, an adapter's) is tracked, and so is the leaf it goes into.  An untracked
container holds untracked things only when it is untracked, so no cycle the collector
could have freed is hidden from it; and nothing under a tree refers back into it.
"""

from cpython.dict cimport PyDict_Contains, PyDict_Next, PyDict_SetItem
from cpython.list cimport PyList_Append
from cpython.object cimport PyObject, PyTypeObject, newfunc

from types import MemberDescriptorType

from mqtt_twisted.codec.packets import Subscription
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.topic_tree import _Leaf
from mqtt_twisted.errors import ProtocolError
from mqtt_twisted.records import SubscriptionOptions

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)
    int PyObject_GC_IsTracked(object op)
    Py_ssize_t PyUnicode_FindChar(object s, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    int PyUnicode_KIND(object s)
    void* PyUnicode_DATA(object s)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    Py_UCS4 PyUnicode_READ_CHAR(object s, Py_ssize_t index)
    ctypedef struct _PyDictViewObject:
        PyObject* dv_dict
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef Py_ssize_t _offset(cls, str name):
    """Where ``cls``'s slot ``name`` sits in its instances (0: not a plain slot)."""
    descr = cls.__dict__.get(name)
    if type(descr) is not MemberDescriptorType:
        return 0
    return (<PyMemberDescrObject*><PyObject*>descr).d_member.offset


cdef object Sub = Subscription
# A Subscription's fields read from their slots, not through attribute lookups
# (five a filter: a third of what grant did per filter); 0 where a field is not a
# plain slot any more, and then every read is an attribute lookup.
cdef Py_ssize_t _FILTER = _offset(Subscription, "topic_filter")
cdef Py_ssize_t _QOS = _offset(Subscription, "qos")
cdef Py_ssize_t _NO_LOCAL = _offset(Subscription, "no_local")
cdef Py_ssize_t _RAP = _offset(Subscription, "retain_as_published")
cdef Py_ssize_t _HANDLING = _offset(Subscription, "retain_handling")
cdef bint _SLOTS = _FILTER and _QOS and _NO_LOCAL and _RAP and _HANDLING
SUBSCRIPTION_SLOTS_KNOWN = _SLOTS  # (tests: a change to Subscription is noticed)


cdef inline object _slot(object o, Py_ssize_t offset):
    """The value in ``o``'s slot at ``offset`` (AttributeError when it is empty)."""
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>o) + offset))[0]
    if value == NULL:
        raise AttributeError("a Subscription field is not set")
    return <object>value

cdef object Leaf = _Leaf
cdef object Options = SubscriptionOptions
cdef object _NOT_AUTHORIZED = ReasonCode.NOT_AUTHORIZED
cdef object _QUOTA_EXCEEDED = ReasonCode.QUOTA_EXCEEDED
cdef object _REFUSED_V3 = 0x80


# A leaf made as ``Leaf()`` makes it (dict's tp_new, and dict's __init__ with nothing
# to add does nothing), without the call through the type: about 300 instructions a
# filter.  Only while the leaf class adds no __new__ or __init__ of its own.
cdef bint _LEAF_NEW = Leaf.__new__ is dict.__new__ and Leaf.__init__ is dict.__init__
cdef newfunc _dict_new = (<PyTypeObject*>dict).tp_new
cdef tuple _NO_ARGS = ()


cdef inline object _new_leaf():
    """An empty leaf, off the collector's lists until a tracked value goes in."""
    leaf = _dict_new(<type>Leaf, <PyObject*>_NO_ARGS, NULL) if _LEAF_NEW else Leaf()
    PyObject_GC_UnTrack(<void*>leaf)
    return leaf


cdef inline void _set(dict d, object key, object value) except *:
    """``d[key] = value``, keeping ``d`` off the collector's lists if it was off them
    and ``value`` is too (CPython tracks a dict when any container goes in, tracked or
    not): an untracked node or leaf holds untracked values only."""
    cdef bint off = not PyObject_GC_IsTracked(d)
    PyDict_SetItem(d, key, value)
    if off and not PyObject_GC_IsTracked(value):
        PyObject_GC_UnTrack(<void*>d)


cdef inline object _get(dict d, object key):
    """``d.get(key)`` without the method call (None when absent)."""
    cdef PyObject* found = PyDict_GetItemWithError(d, key)
    if found == NULL:
        return None
    return <object>found


cdef enum:
    _DEPTH = 32  # levels of the previous filter remembered (deeper ones are walked)


cdef inline Py_ssize_t _common(str a, str b, Py_ssize_t limit):
    """How many leading characters ``a`` and ``b`` share, at most ``limit`` (0 when
    they are stored in different widths: then they are not compared)."""
    cdef int kind = PyUnicode_KIND(a)
    cdef Py_ssize_t i = 0, n = min(limit, len(b))
    cdef void* x
    cdef void* y
    if PyUnicode_KIND(b) != kind:
        return 0
    x = PyUnicode_DATA(a)
    y = PyUnicode_DATA(b)
    if kind == 1:
        while i < n and (<const char*>x)[i] == (<const char*>y)[i]:
            i += 1
    else:
        while i < n and PyUnicode_READ(kind, x, i) == PyUnicode_READ(kind, y, i):
            i += 1
    return i


cdef struct _Walk:
    # The previous filter's walk: the filter (borrowed: the caller holds it), the
    # levels remembered, where each ends (its '/') and the node reached past it.
    PyObject* prev
    Py_ssize_t kept
    Py_ssize_t ends[_DEPTH]
    PyObject* below[_DEPTH]


cdef Py_ssize_t _add(dict root, object owner, str text, object value, _Walk* walk) except -1:
    """Set ``owner``'s ``value`` for the filter ``text`` (1 if it is new, else 0),
    going on from ``walk``'s node for the levels ``text`` shares with the previous
    filter, and leaving its own walk there for the next."""
    cdef Py_ssize_t start = 0, stop, depth = 0, common, n = len(text)
    cdef dict node = root
    if walk.kept:
        common = _common(<str>walk.prev, text, walk.ends[walk.kept - 1] + 1)
        while depth < walk.kept and walk.ends[depth] < common:
            depth += 1
        if depth:
            node = <dict>walk.below[depth - 1]
            start = walk.ends[depth - 1] + 1
    while True:
        stop = PyUnicode_FindChar(text, 0x2F, start, n, 1)
        if stop < 0:
            break
        level = text[start:stop]
        child = _get(node, level)
        if child is None:
            child = {}
            _set(node, level, child)
        elif type(child) is Leaf:  # a filter ends here: now a node holding it
            leaf = child
            child = {}
            _set(<dict>child, None, leaf)
            _set(node, level, child)
        node = <dict>child
        start = stop + 1
        if depth < _DEPTH:
            walk.ends[depth] = stop
            walk.below[depth] = <PyObject*>node
            depth += 1
    walk.prev = <PyObject*>text
    walk.kept = depth
    tail = text[start:] if start else text
    entry = _get(node, tail)
    if entry is None:
        values = _new_leaf()
        _set(node, tail, values)
    elif type(entry) is Leaf:
        values = entry
    else:
        values = _get(<dict>entry, None)
        if values is None:
            values = _new_leaf()
            _set(<dict>entry, None, values)
    new = not PyDict_Contains(values, owner)
    _set(<dict>values, owner, value)
    return new


cdef inline bint _shared(str text):
    """Whether ``text`` is a ``$share/`` filter."""
    return (len(text) > 6 and PyUnicode_READ_CHAR(text, 0) == 0x24
            and text.startswith("$share/"))


cdef object _DICT_ITEMS = type({}.items())


def insert(dict root, owner, items, list skipped=None):
    """``topic_tree.insert``, compiled: the levels found and cut without a list, and
    those a filter shares with the one before it (a packet's filters usually start
    alike: "dev/17/a", "dev/17/b") not cut, hashed and looked up again: the walk goes
    on from the node the previous filter reached at the last level they share.  (A
    node on a walked path stays that node: the insert only adds, and the one thing it
    replaces is a leaf, by a node holding it; so the node of a path of levels is the
    same for every filter of the call.  The nodes are borrowed: the tree holds them,
    and nothing is removed from it meanwhile.)  A dict's ``items()`` (a SUBSCRIBE's
    ``{filter: options}``) is read in place, without a pair made per filter."""
    cdef Py_ssize_t new = 0, pos = 0
    cdef PyObject* key
    cdef PyObject* val
    cdef _Walk walk
    cdef str text
    walk.kept = 0
    walk.prev = NULL
    if type(items) is _DICT_ITEMS:
        # (The dict is not changed meanwhile: only the tree's dicts are.)
        added = <object>(<_PyDictViewObject*>items).dv_dict
        while PyDict_Next(added, &pos, &key, &val):
            text = <object>key
            if skipped is not None and _shared(text):
                PyList_Append(skipped, (text, <object>val))
                continue
            new += _add(root, owner, text, <object>val, &walk)
        return new
    held = None  # the filter the walk's ``prev`` borrows
    for topic_filter, value in items:
        text = topic_filter
        if skipped is not None and _shared(text):
            PyList_Append(skipped, (topic_filter, value))
            continue
        new += _add(root, owner, text, value, &walk)
        held = text
    return new


def grant(list subs, list checks, allowed, held, Py_ssize_t limit, int maximum_qos,
          bint v5, sub_id, limit_hit):
    """``control.grant``, compiled: one options record per distinct set of options in
    a table indexed by their bits, not a dict of tuples; records and granted tuples
    off the collector's lists."""
    cdef list codes = [], granted = []
    cdef dict added = {}
    cdef dict slow = None  # records of options out of the usual ranges: the pure key
    cdef list table = [None] * 48
    cdef Py_ssize_t fresh = 0, i, count = len(subs), base = len(held)
    cdef int index
    cdef bint is_new, fast
    for i in range(count):
        sub = subs[i]
        check = checks[i]
        refusal = check[0]
        shared = check[1]
        fast = _SLOTS and type(sub) is Sub
        topic_filter = _slot(sub, _FILTER) if fast else sub.topic_filter
        if shared is not None and v5 and (_slot(sub, _NO_LOCAL) if fast else sub.no_local):
            raise ProtocolError("no local on a shared subscription")  # [MQTT-3.8.3-4]
        if refusal:
            PyList_Append(codes, refusal if v5 else _REFUSED_V3)
            continue
        if allowed is not None and not allowed[i]:
            PyList_Append(codes, _NOT_AUTHORIZED if v5 else _REFUSED_V3)
            continue
        is_new = topic_filter not in held and not PyDict_Contains(added, topic_filter)
        if is_new:
            # Replacing a subscription it holds is always allowed.
            if limit and base + fresh >= limit:
                limit_hit("subscriptions")
                PyList_Append(codes, _QUOTA_EXCEEDED if v5 else _REFUSED_V3)
                continue
            fresh += 1
        if fast:
            sub_qos = _slot(sub, _QOS)
            no_local_obj = _slot(sub, _NO_LOCAL)
            rap_obj = _slot(sub, _RAP)
            handling_obj = _slot(sub, _HANDLING)
        else:
            sub_qos = sub.qos
            no_local_obj = sub.no_local
            rap_obj = sub.retain_as_published
            handling_obj = sub.retain_handling
        qos_obj = sub_qos if sub_qos < maximum_qos else maximum_qos
        if (type(qos_obj) is int and type(handling_obj) is int
                and type(no_local_obj) is bool and type(rap_obj) is bool
                and 0 <= qos_obj <= 2 and 0 <= handling_obj <= 2):
            index = (<int>qos_obj | (4 if no_local_obj else 0) | (8 if rap_obj else 0)
                     | (<int>handling_obj << 4))
            options = table[index]
            if options is None:
                options = Options(qos_obj, no_local_obj, rap_obj, handling_obj, sub_id)
                PyObject_GC_UnTrack(<void*>options)  # its fields are atoms
                table[index] = options
        else:
            key = (qos_obj, no_local_obj, rap_obj, handling_obj)
            if slow is None:
                slow = {}
            options = slow.get(key)
            if options is None:
                options = slow[key] = Options(*key, sub_id)
        PyDict_SetItem(added, topic_filter, options)
        PyList_Append(codes, qos_obj)
        if shared is None:
            item = (topic_filter, options, is_new)
            PyObject_GC_UnTrack(<void*>item)
            PyList_Append(granted, item)
    return codes, added, granted


def topic_filters(list subs):
    """``control.topic_filters``, compiled."""
    cdef list result = []
    for sub in subs:
        PyList_Append(result, _slot(sub, _FILTER) if _SLOTS and type(sub) is Sub
                      else sub.topic_filter)
    return result


def wanted(list granted, may, plain, sys):
    """``delivery.wanted``, compiled; a filter the store's answers rule out is passed
    over before its options are read (the usual case: no retained message at all)."""
    cdef list result = []
    cdef str text
    cdef bint check = may is not None, plain_ok = plain, sys_ok = sys, dollar = False
    for topic_filter, options, is_new in granted:
        if check:
            text = topic_filter
            dollar = len(text) > 0 and PyUnicode_READ_CHAR(text, 0) == 0x24
            if not dollar and not plain_ok:
                continue
        handling = options.retain_handling
        if handling and (handling == 2 or not is_new):
            continue
        if dollar:
            if text == "$SYS" or text.startswith("$SYS/"):
                if not sys_ok:
                    continue
            elif not may(topic_filter):
                continue
        PyList_Append(result, (topic_filter, options))
    return result


def usual_filters(list filters, Py_ssize_t short):
    """``grant.usual_filters``, compiled: each filter's characters scanned once (a
    '+' must be a whole level, a '#' the whole last one; no U+0000 or line feed, no
    ``$share/``, nor ``$share`` alone, which the pure joined text reads as one),
    without the joined copy and its replacements."""
    cdef Py_ssize_t i, n
    cdef int kind
    cdef void* data
    cdef const unsigned char* chars
    cdef Py_UCS4 c, before
    if not filters:
        return False
    for f in filters:
        if type(f) is not str:
            return False
        n = len(<str>f)
        if n == 0 or n > short:
            return False
        kind = PyUnicode_KIND(f)
        data = PyUnicode_DATA(f)
        if PyUnicode_READ(kind, data, 0) == 0x24 and (
                (<str>f).startswith("$share/") or f == "$share"):
            return False
        if kind == 1:  # (the usual one: no character beyond U+00FF)
            chars = <const unsigned char*>data
            for i in range(n):
                c = chars[i]
                if c <= 0x2B and (c == 0x2B or c == 0x23 or c == 0 or c == 0x0A):
                    if c == 0x2B:  # '+'
                        if (i and chars[i - 1] != 0x2F) or (i + 1 < n and chars[i + 1] != 0x2F):
                            return False
                    elif c == 0x23:  # '#'
                        if (i and chars[i - 1] != 0x2F) or i + 1 != n:
                            return False
                    else:
                        return False
            continue
        before = 0x2F  # a filter's start is a level's start
        for i in range(n):
            c = PyUnicode_READ(kind, data, i)
            if c == 0x2B:  # '+'
                if before != 0x2F or (i + 1 < n and PyUnicode_READ(kind, data, i + 1) != 0x2F):
                    return False
            elif c == 0x23:  # '#'
                if before != 0x2F or i + 1 != n:
                    return False
            elif c == 0 or c == 0x0A:
                return False
            before = c
    return True
