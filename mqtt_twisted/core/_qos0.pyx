# cython: language_level=3, annotation_typing=False, binding=True
# core/qos0.py compiled as it is (docs/speedups.md): one source, so the pure module
# stays the specification and the fallback; core/fastpath.py chooses at import.
include "qos0.py"
