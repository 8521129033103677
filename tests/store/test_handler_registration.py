"""Handlers are registered by event type (`on`), so each takes its own event class and the loop
gives it only events of that class."""
from __future__ import annotations

import pytest

from shared.consumer import Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked


async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
    pass


async def on_erased(event: CustomerErased, tx: Transaction) -> None:
    pass


def test_each_event_type_maps_to_its_own_handlers():
    handlers = handlers_of(on(CustomerLinked, on_linked), on(CustomerErased, on_erased, on_erased))
    assert handlers == {CustomerLinked: [on_linked], CustomerErased: [on_erased, on_erased]}


def test_a_type_registered_twice_is_refused_not_silently_overwritten():
    with pytest.raises(ValueError, match="one on"):
        handlers_of(on(CustomerLinked, on_linked), on(CustomerLinked, on_linked))
