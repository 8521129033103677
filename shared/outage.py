"""Telling a poison message from an outage.

A message that keeps failing goes to the dead-letter topic (or the quarantine) so it cannot stall
the rest; but when the store or the bus is down, every message fails, and none of them is poison.
Before giving up on a message, loops call `raise_if_outage`: during an outage it raises, the
offsets stay uncommitted, and the work is retried once the dependency is back.
"""
from __future__ import annotations

import asyncio

from shared.bus.base import Bus
from shared.store import Store

PROBE_SECONDS = 5.0


class Outage(RuntimeError):
    """The store or the bus cannot be reached; retry later rather than give up on the message."""


async def raise_if_outage(store: Store, bus: Bus, cause: BaseException) -> None:
    for name, probe in (("store", store.ping), ("bus", bus.ping)):
        try:
            await asyncio.wait_for(probe(), PROBE_SECONDS)
        except Exception as exc:
            raise Outage(f"the {name} is unreachable ({type(exc).__name__}: {exc})") from cause
