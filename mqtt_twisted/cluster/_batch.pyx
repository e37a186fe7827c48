# cython: language_level=3, annotation_typing=False, binding=True
# cluster/batch.py compiled as it is (docs/speedups.md): one source, so the pure module
# stays the specification and the fallback; cluster/twins.py binds its functions.
include "batch.py"
