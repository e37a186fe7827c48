"""Instructions per attribute read of a slotted Python object: CPython 3.11's interpreter
(a specialized ``LOAD_ATTR_SLOT``), Cython's compiled ``obj.attr`` (``tp_getattro``:
the generic lookup) and a compiled read at the member descriptor's offset, counted by
callgrind (docs/speedups.md, "The QoS 1/2 path compiled as it is").

Each mode runs a loop over 100,000 objects of a class with four slots, reading the
four; the same loop without the reads is counted too, and a read is the difference
over four.  Why compiling the QoS 1/2 path's modules as they are made them slower,
and what reading fields by offset would save:

    python bench/slot_read_callgrind.py

Needs ``valgrind`` with ``callgrind.h``, ``gcc`` and Cython; about a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent

_PYX = r'''
# cython: language_level=3, binding=True
cdef extern from *:
    """
    #include <structmember.h>
    static inline PyObject* slot_at(PyObject* o, Py_ssize_t off) {
        PyObject* v = *(PyObject**)((char*)o + off);
        Py_XINCREF(v); return v;
    }
    static inline Py_ssize_t member_offset(PyObject* d) {
        return ((PyMemberDescrObject*)d)->d_member->offset;
    }
    """
    object slot_at(object o, Py_ssize_t off)
    Py_ssize_t member_offset(object d)


def nothing(objs):
    cdef Py_ssize_t t = 0
    for o in objs:
        t += 1
    return t


def generic(objs):
    cdef Py_ssize_t t = 0
    cdef object x
    for o in objs:
        x = o.a; x = o.b; x = o.c; x = o.d
        t += 1
    return t


def by_offset(objs, cls):
    cdef Py_ssize_t t = 0
    cdef object x
    cdef Py_ssize_t oa = member_offset(cls.__dict__["a"]), ob = member_offset(cls.__dict__["b"])
    cdef Py_ssize_t oc = member_offset(cls.__dict__["c"]), od = member_offset(cls.__dict__["d"])
    for o in objs:
        if type(o) is cls:
            x = slot_at(o, oa); x = slot_at(o, ob); x = slot_at(o, oc); x = slot_at(o, od)
            t += 1
    return t
'''

_PROGRAM = r'''
import sys
import cgmark
import slotread


class R:
    __slots__ = ("a", "b", "c", "d")

    def __init__(self):
        self.a = self.b = self.c = self.d = 1


def nothing(objs):
    t = 0
    for o in objs:
        t += 1
    return t


def reads(objs):
    t = 0
    for o in objs:
        x = o.a; x = o.b; x = o.c; x = o.d
        t += 1
    return t


run = {"interpreter": (nothing, reads), "compiled": (slotread.nothing, slotread.generic),
       "by offset": (slotread.nothing, lambda o: slotread.by_offset(o, R))}[sys.argv[1]]
run = run[int(sys.argv[2])]
objs = [R() for _ in range(100000)]
run(objs[:1000])
run(objs[:1000])
cgmark.toggle()
run(objs)
cgmark.toggle()
'''


def collected(where: Path, mode: str, with_reads: int) -> int:
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-atstart=no",
         "--callgrind-out-file=/dev/null", sys.executable, "-c", _PROGRAM, mode,
         str(with_reads)], env=dict(os.environ, PYTHONPATH=str(where)),
        capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", result.stderr).group(1))  # type: ignore[union-attr]


def main() -> None:
    sys.path.insert(0, str(BENCH))
    from crossing_callgrind import build_helper

    with tempfile.TemporaryDirectory() as where:
        build_helper(Path(where))
        (Path(where) / "slotread.pyx").write_text(_PYX)
        subprocess.run([sys.executable, "-m", "cython", "-3", "slotread.pyx"],
                       cwd=where, check=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC",
                        f"-I{sysconfig.get_paths()['include']}", "-o",
                        f"slotread{sysconfig.get_config_var('EXT_SUFFIX')}", "slotread.c"],
                       cwd=where, check=True)
        for mode in ("interpreter", "compiled", "by offset"):
            base, reads = (collected(Path(where), mode, i) for i in (0, 1))
            print(f"{mode}: {(reads - base) / 400000:.1f} instructions per slot read "
                  f"(the loop alone {base / 100000:.1f} per object)", flush=True)


if __name__ == "__main__":
    main()
