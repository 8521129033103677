"""A batch of a customer's events folded into their profile at once gives what the contract says of
the events one by one, in any order: first and last seen are the earliest and latest time, the
first touch's channel is the channel of the earliest event (the profile's own on a tie, else the
first given), each trait keeps the value set latest (the last given on a tie), and the count adds
up. Held against a brute-force reference over random batches: times in several zones, with ties,
held profiles as stored (times in UTC, traits encoded), traits set again and again."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from services.segmentation.recording import _folded
from shared.events import Interaction

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
CHANNELS = ["direct", "email", "paid", "social"]
TRAITS = ["plan", "email", "city"]


def _time(rng: random.Random) -> datetime:
    return (START + timedelta(minutes=rng.randrange(6))).astimezone(rng.choice(ZONES))  # few minutes: many ties


def _event(rng: random.Random, i: int) -> Interaction:
    traits = {name: rng.randrange(100) for name in rng.sample(TRAITS, rng.randrange(len(TRAITS) + 1))} if rng.random() < 0.5 else {}
    # through JSON, as the consumer decodes them (pydantic's own tzinfo)
    return Interaction.model_validate_json(orjson.dumps({
        "event_id": f"e{i}", "customer_id": "c", "type": "track", "name": "Product Viewed", "traits": traits,
        "channel": rng.choice(CHANNELS), "occurred_at": _time(rng).isoformat(), "received_at": START.isoformat()}))


def _held(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.3:
        return None
    first = _time(rng).astimezone(UTC)  # the store reads times back in UTC
    names = rng.sample(TRAITS, rng.randrange(len(TRAITS) + 1))
    return {"traits": {n: -1 for n in names}, "traits_at": {n: _time(rng).isoformat() for n in names},
            "first_seen": first, "last_seen": max(first, _time(rng).astimezone(UTC)), "event_count": rng.randrange(1, 9),
            "channel": rng.choice(CHANNELS), "channel_at": None if rng.random() < 0.2 else first}


def _reference(held: dict[str, Any] | None, events: list[Interaction]) -> tuple[Any, ...]:
    """Straight from the contract: rank the candidates, the profile's own before the events'."""
    times = [e.occurred_at for e in events] + ([held["first_seen"], held["last_seen"]] if held else [])
    touches = [(e.occurred_at, i, e.channel) for i, e in enumerate(events)]
    set_at = [(e.occurred_at.isoformat(), i, n, v) for i, e in enumerate(events) for n, v in e.traits.items()]
    if held:
        if held["channel_at"] is not None:
            touches.append((held["channel_at"], -1, held["channel"]))
        set_at += [(held["traits_at"][n], -1, n, v) for n, v in held["traits"].items()]
    first_touch = min(touches, key=lambda t: (t[0], t[1]))
    latest_set: dict[str, tuple[str, int, Any]] = {}
    for stamp, rank, name, value in set_at:
        if name not in latest_set or (stamp, rank) > latest_set[name][:2]:
            latest_set[name] = (stamp, rank, value)
    return ({n: v for n, (_, _, v) in latest_set.items()}, {n: s for n, (s, _, _) in latest_set.items()},
            min(times), max(times), len(events) + (held["event_count"] if held else 0), first_touch[2], first_touch[0])


@pytest.mark.parametrize("seed", range(40))
def test_a_batch_folds_in_as_its_events_would_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        held = _held(rng)
        events = [_event(rng, i) for i in range(rng.randrange(1, 8))]
        expected = _reference(held, events)
        given = None if held is None else {**held, "traits": orjson.dumps(held["traits"]), "traits_at": orjson.dumps(held["traits_at"])}
        traits, traits_at, *rest = _folded(given, events)
        assert (orjson.loads(traits), orjson.loads(traits_at), *rest) == expected
