"""A customer's country for the cold start is the one their traits named latest by event time,
whatever order the identifies arrive in and whichever batch holds them (countries are written a
batch at a time, issue 13). SQLite and PostgreSQL."""
from __future__ import annotations

from tests.recommendation.support import Shop, identify, shop_messages


async def strategy(shop: Shop, customer: str) -> str:
    answer: str = (await shop.recommend(customer))["strategy"]
    return answer


class TestTheLatestCountryWins:
    async def test_a_move_counts_and_a_late_identify_from_before_it_does_not(self, shop: Shop) -> None:
        await shop.send(*shop_messages())  # six customers in France, none in Peru
        await shop.send(identify("n-1", "newbie", days=1, country="France"),
                        identify("m-1", "mover", days=1, country="France"))
        assert [await strategy(shop, c) for c in ("newbie", "mover")] == ["popular_in_country"] * 2

        await shop.send(identify("m-2", "mover", days=2, country="Peru"))  # moved: Peru has no list of its own
        await shop.send(identify("m-0", "mover", days=0, country="France"),  # late: from before the move
                        identify("n-0", "newbie", days=0, country="Peru"))
        assert [await strategy(shop, c) for c in ("newbie", "mover")] == ["popular_in_country", "popular"]

        await shop.send(identify("m-3", "mover", days=3, country="France"))  # back again
        assert await strategy(shop, "mover") == "popular_in_country"
