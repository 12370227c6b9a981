"""What every process of the service runs on: the event loop, and a helper process's tie to the
main one. Kept apart from :mod:`pacs.server`, whose imports (the archive, the HTTP app, the
interface engine) a helper process such as the MLLP front would otherwise pay at each start."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("pacs.server")

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies


def die_with_parent() -> None:
    """Have the kernel SIGKILL this child process when the thread of ``pacs serve`` that started
    it ends, the whole process killed included (prctl(2) PR_SET_PDEATHSIG): a helper process
    must not outlive the main one, holding a port or writing on its own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        log.warning("this platform cannot tie a helper process's life to the main process")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop every front end runs on: uvloop (libuv) where it is installed, as it is with
    uvicorn's standard extras on Linux; its sockets and thread hand-offs cost a fraction of the
    standard loop's, which shows on every HL7 message and every WADO-RS chunk."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main)
