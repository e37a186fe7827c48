# The compiled codec's encoders and topic matching: part of ``_speedups.pyx`` (included by
# it, one extension module), in a file of its own to keep each source under 600 lines.

cdef inline Py_ssize_t _vbi_size(Py_ssize_t value):
    if value < 128:
        return 1
    if value < 16384:
        return 2
    if value < 2097152:
        return 3
    return 4


def encode_publish(p, version):
    """``_encode.encode_publish``, compiled: one allocation, one copy of the payload.

    Fields of unexpected types or ranges go to the pure function, whose errors they are.
    """
    q = p.qos
    if (type(q) is not int or not 0 <= q <= 2 or type(p.topic) is not str
            or type(p.payload) is not bytes
            or (q and type(p.packet_id) is not int)):
        return _pure_encode_publish(p, version)
    return _encode_publish(p.topic, p.payload, q, p.dup, p.retain, p.packet_id, version,
                           p.properties)


def encode_publish_plain(topic, payload, qos, retain, packet_id):
    """``_encode.encode_publish_plain``, compiled: ``encode_publish``'s bytes without a
    ``Publish`` object to read them from."""
    if (type(qos) is not int or not 1 <= qos <= 2 or type(topic) is not str
            or type(payload) is not bytes or type(packet_id) is not int):
        return _pure_encode_publish_plain(topic, payload, qos, retain, packet_id)
    return _encode_publish(topic, payload, qos, False, retain, packet_id, 4, None)


cdef object _encode_publish(str text, bytes payload, int qos, dup, retain, packet_id,
                            int version, properties):
    cdef int first
    cdef Py_ssize_t n, length, size, i, pid = 0
    cdef char* out
    cdef bytes topic, props = b""
    try:
        topic = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("topic holds a lone surrogate") from None
    n = PyBytes_GET_SIZE(topic)
    if n > 0xFFFF or memchr(PyBytes_AS_STRING(topic), 0, n) != NULL:
        raise ValidationError("topic longer than 65,535 bytes or holding U+0000")
    length = 2 + n
    if qos:
        if packet_id is None or not 0 < packet_id <= 0xFFFF:
            raise ValidationError(f"packet identifier must be 1..65535, not {packet_id!r}")
        pid = packet_id
        length += 2
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    else:
        first = 0x31 if retain else 0x30
    if version == 5:
        props = encode_properties(properties, _PUBLISH) if properties else b"\x00"
        length += PyBytes_GET_SIZE(props)
    length += PyBytes_GET_SIZE(payload)
    if length > _MAX_REMAINING:
        raise ValidationError(f"variable byte integer out of range: {length}")
    size = 1 + _vbi_size(length) + length
    result = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(result)
    out[0] = <char>first
    i = 1
    while True:
        if length >= 128:
            out[i] = <char>((length & 0x7F) | 0x80)
            length >>= 7
            i += 1
        else:
            out[i] = <char>length
            i += 1
            break
    out[i] = <char>(n >> 8)
    out[i + 1] = <char>(n & 0xFF)
    memcpy(out + i + 2, PyBytes_AS_STRING(topic), n)
    i += 2 + n
    if qos:
        out[i] = <char>(pid >> 8)
        out[i + 1] = <char>(pid & 0xFF)
        i += 2
    if version == 5:
        memcpy(out + i, PyBytes_AS_STRING(props), PyBytes_GET_SIZE(props))
        i += PyBytes_GET_SIZE(props)
    memcpy(out + i, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
    return result


def encode_publishes(topics, payloads, version, retain=True):
    """``_encode.encode_publishes``, compiled: sizes first, then one allocation and one
    copy of each topic and payload.  ASCII topics are copied from the ``str`` itself;
    others are encoded (the pure function's errors are raised for them).  Lists of
    ``str`` and ``bytes`` only; anything else goes to the pure function."""
    if type(topics) is not list or type(payloads) is not list or len(topics) != len(payloads):
        return _pure_encode_publishes(topics, payloads, version, retain)
    cdef Py_ssize_t count = len(topics), k, n, length, size = 0, i = 0, e = 0, m
    cdef int first = 0x31 if retain else 0x30
    cdef int v5 = version == 5
    cdef const char* name
    cdef char* out
    cdef list encoded = []  # the UTF-8 of the topics that are not ASCII, in order
    for k in range(count):
        topic = topics[k]
        payload = payloads[k]
        if type(topic) is not str or type(payload) is not bytes:
            return _pure_encode_publishes(topics, payloads, version, retain)
        if PyUnicode_IS_ASCII(topic):
            name = PyUnicode_AsUTF8AndSize(topic, &n)
        else:
            try:
                raw = (<str>topic).encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("topic holds a lone surrogate") from None
            encoded.append(raw)
            name = PyBytes_AS_STRING(raw)
            n = PyBytes_GET_SIZE(raw)
        if n > 0xFFFF or memchr(name, 0, n) != NULL:
            raise ValidationError("topic longer than 65,535 bytes or holding U+0000")
        length = 2 + n + v5 + PyBytes_GET_SIZE(payload)
        if length > _MAX_REMAINING:
            raise ValidationError(f"variable byte integer out of range: {length}")
        size += 1 + _vbi_size(length) + length
    result = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(result)
    for k in range(count):
        topic = topics[k]
        payload = payloads[k]
        if PyUnicode_IS_ASCII(topic):
            name = PyUnicode_AsUTF8AndSize(topic, &n)
        else:
            raw = encoded[e]
            e += 1
            name = PyBytes_AS_STRING(raw)
            n = PyBytes_GET_SIZE(raw)
        m = PyBytes_GET_SIZE(payload)
        length = 2 + n + v5 + m
        out[i] = <char>first
        i += 1
        while length >= 128:
            out[i] = <char>((length & 0x7F) | 0x80)
            length >>= 7
            i += 1
        out[i] = <char>length
        out[i + 1] = <char>(n >> 8)
        out[i + 2] = <char>(n & 0xFF)
        memcpy(out + i + 3, name, n)
        i += 3 + n
        if v5:
            out[i] = 0
            i += 1
        memcpy(out + i, PyBytes_AS_STRING(payload), m)
        i += m
    return result


def topic_matches(str topic_filter, str topic):
    """``topics.topic_matches``, compiled: compares level by level without splitting."""
    cdef Py_ssize_t fn = len(topic_filter), tn = len(topic), fi = 0, ti = 0, fe, te
    if tn and topic[0] == "$" and fn and (topic_filter[0] == "+" or topic_filter[0] == "#"):
        return False
    while True:
        fe = topic_filter.find("/", fi)
        if fe < 0:
            fe = fn
        if fe - fi == 1 and topic_filter[fi] == "#":
            return True
        if ti > tn:  # the topic has no level left
            return False
        te = topic.find("/", ti)
        if te < 0:
            te = tn
        if not (fe - fi == 1 and topic_filter[fi] == "+"):
            if fe - fi != te - ti or topic_filter[fi:fe] != topic[ti:te]:
                return False
        fi = fe + 1
        ti = te + 1
        if fi > fn:  # the filter's last level is done
            return ti > tn
