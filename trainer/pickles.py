"""Pickling models too deep for Python's default recursion limit.

``pickle`` walks an object graph recursively, and a River tree can be very deep: the split
search of a Hoeffding tree on an ever-increasing feature (a date, a serial number) keeps a
binary search tree as deep as the rows its leaf saw, and on River's TrumpApproval stream
``pickle.dumps`` of a ``HoeffdingTreeRegressor`` raises RecursionError after ~350 rows. When it
does, :func:`dumps` pickles again in a thread with a stack of :data:`DEEP_STACK_BYTES` and the
recursion limit raised to what that stack holds. The limit is the interpreter's, so it is
raised only for that one call; unpickling needs no recursion and works as usual.
"""

from __future__ import annotations

import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEEP_STACK_BYTES = 512 << 20
"""The stack of the thread that pickles a deep model: only the pages it uses take memory."""
_BYTES_PER_LEVEL = 2048
"""Stack one level of ``pickle``'s recursion may take (~1.3 kB measured, with room to spare):
the deep limit stops the pickling with RecursionError before the stack runs out."""
DEEP_RECURSION_LIMIT = DEEP_STACK_BYTES // _BYTES_PER_LEVEL

_lock = threading.Lock()


def dumps(obj: Any, *, deep: bool = True) -> bytes:
    """Pickle ``obj`` (highest protocol); if it is too deep, again with a deep stack.

    With ``deep`` False, or if even the deep stack is not enough, RecursionError is raised.
    """
    try:
        return _dumps(obj)
    except RecursionError:
        if not deep:
            raise
    return on_deep_stack(_dumps, obj)


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def on_deep_stack(function: Callable[[Any], T], argument: Any) -> T:
    """``function(argument)`` in a thread with a stack of :data:`DEEP_STACK_BYTES` and the
    recursion limit raised to what it holds (for that call only); its exception is raised."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function(argument))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    with _lock:  # one at a time: the stack size and the limit are global
        limit = sys.getrecursionlimit()
        size = threading.stack_size(DEEP_STACK_BYTES)
        try:
            sys.setrecursionlimit(max(limit, DEEP_RECURSION_LIMIT))
            thread = threading.Thread(target=run, name="pgml-sidecar deep stack")
            thread.start()
            thread.join()
        finally:
            threading.stack_size(size)
            sys.setrecursionlimit(limit)
    if failure:
        raise failure[0]
    return result[0]
