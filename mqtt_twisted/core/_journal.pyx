# cython: language_level=3, annotation_typing=False, binding=True
# core/journal.py compiled as it is (docs/speedups.md, "The QoS 1/2 path"): one source, so
# the pure module stays the specification and the fallback; core/_qos12.py binds what
# runs per QoS 1/2 message from here over the pure one.
include "journal.py"
