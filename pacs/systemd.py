"""Telling systemd how the service is: the notification protocol of ``Type=notify`` units.

systemd names a datagram socket in ``NOTIFY_SOCKET`` (sd_notify(3)); ``pacs serve`` sends it
``READY=1`` once every front end listens, ``WATCHDOG=1`` every half of ``WATCHDOG_USEC`` while it
is healthy (the intake worker runs and the database answers: sd_watchdog_enabled(3)), and
``STOPPING=1`` when it starts to stop. Without ``NOTIFY_SOCKET`` (not started by systemd, or not
as ``Type=notify``) nothing is sent. A watchdog ping that is not sent because the service is
unhealthy lets systemd restart it (``WatchdogSec=``, ``Restart=on-failure`` in
``deploy/pacs.service``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from pacs.settings import ServiceManager

log = logging.getLogger(__name__)

ABSTRACT_PREFIX = "@"  # NOTIFY_SOCKET names a socket in Linux's abstract namespace with this
MICROSECONDS = 1_000_000
WATCHDOG_SHARE = 0.5  # ping at this share of the period, as sd_watchdog_enabled(3) advises


class Notifier:
    """The sender of one process's notifications (none when ``NOTIFY_SOCKET`` is unset)."""

    def __init__(self, manager: ServiceManager) -> None:
        self.address: str | None = None
        if manager.notify_socket:
            path = manager.notify_socket
            self.address = "\0" + path[1:] if path.startswith(ABSTRACT_PREFIX) else path
        self.watchdog_seconds = manager.watchdog_usec / MICROSECONDS if manager.watchdog_usec else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``VARIABLE=value`` lines in one datagram; False if systemd is not listening."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    async def watch(self, healthy: Callable[[], Awaitable[str | None]]) -> None:
        """Ping the watchdog every half period while ``healthy()`` finds nothing wrong (it returns
        what is wrong, or None); runs until cancelled. Nothing to do without a watchdog."""
        if self.address is None or self.watchdog_seconds is None:
            return
        interval = self.watchdog_seconds * WATCHDOG_SHARE
        last_problem: str | None = None
        while True:
            try:
                problem = await asyncio.wait_for(healthy(), interval)
            except TimeoutError:
                problem = f"the health check took more than {interval:g} s"
            if problem is None:
                self.send("WATCHDOG=1")
                if last_problem is not None:
                    log.warning("healthy again; the watchdog is answered again")
                    self.send("STATUS=serving")
            elif problem != last_problem:
                log.error("not healthy (%s); the watchdog is not answered", problem)
                self.send(f"STATUS=not healthy: {problem}")
            last_problem = problem
            await asyncio.sleep(interval)
