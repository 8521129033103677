"""Follow-up records are written by hand rather than through pydantic (issue 13): every record
the service publishes, for each kind of change, is byte for byte what `encode` makes of the
event it decodes to, with the same key and headers. SQLite."""
from __future__ import annotations

from shared.events import FOLLOWUPS, decode, encode

from tests.followup.support import Followups
from tests.helpers import read_topic


class TestPublishedRecords:
    async def test_every_change_is_published_as_the_contract_encodes_it(self, fu: Followups) -> None:
        await fu.entered("ann", "lifecycle:new", reason="signed up")
        await fu.moved("ann", "purchase", days=0.5)
        await fu.exited("ann", "lifecycle:new", days=0.75)
        satisfaction = await fu.list(customer_id="ann", status="pending")
        await fu.advance(days=8)  # due (a week after the purchase)
        await fu.advance(days=1)  # overdue (the grace of a day passed)
        await fu.ok(satisfaction[0]["id"], "complete", {"outcome": "reached", "note": "happy"})

        await fu.runtime.relay.flush()
        records = await read_topic(fu.runtime.bus, FOLLOWUPS)
        kinds = {decode(r).change for r in records}  # type: ignore[attr-defined]
        assert kinds == {"created", "cancelled", "due", "overdue", "completed"}
        for published in records:
            expected = encode(decode(published))
            assert (published.key, published.value, published.headers) == (expected.key, expected.value, expected.headers)
