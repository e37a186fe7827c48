"""What ``core/qos0.py`` uses of Cython's pure-Python mode, where Cython is not
installed: decorators that change nothing and a type that is ``int``.

Compiled (``core/_qos0.pyx`` includes ``qos0.py``), ``import cython`` is Cython's own:
``@cython.ccall`` makes a function a C function called directly within the module
(and still a Python one outside it), ``@cython.locals`` gives variables C types.  Run
as Python, Cython's ``Shadow`` module (if installed) or this one makes them no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: A C integer type when compiled; an int here.
Py_ssize_t = int
bint = bool


def ccall(function: F) -> F:
    """``cpdef`` when compiled; the function as it is here."""
    return function


def locals(**types: Any) -> Callable[[F], F]:  # (Cython's name, shadowing the builtin here only)
    """C types for the function's variables when compiled; nothing here."""
    return lambda function: function
