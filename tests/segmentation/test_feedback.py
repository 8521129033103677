"""Feedback (docs/api.md section 11): survey answers on the profile, the nps:* segments moving as
answers change, custom rules over them, the NPS and CSAT reports against a reference worked out
here from random answers (late, duplicated, under merged identities), and bad answers counted,
never applied. SQLite and PostgreSQL."""
from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.helpers import ADMIN, READER, eventually
from tests.segmentation.support import T0, Segmentation, at, identify, order, page, survey


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


def category(score: int) -> str:
    if score in (9, 10):
        return "promoter"
    return "passive" if score in (7, 8) else "detractor"


def nps_of(profile: dict[str, Any]) -> list[str]:
    return [s for s in profile["segments"] if s.startswith("nps:")]


async def report(seg: Segmentation, kind: str, **params: Any) -> dict[str, Any]:
    response = await seg.client.get(f"/api/feedback/{kind}", params=params, headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestProfile:
    async def test_the_latest_answer_wins_and_a_late_older_one_does_not_overwrite_it(self, seg: Segmentation) -> None:
        await seg.send(page("p-bo", "bo"), survey("n1", "ann", "nps", 9, days=-2), survey("c1", "ann", "csat", 2, days=-2))
        nobody = await seg.profile("bo")
        assert (nobody["nps"], nobody["csat"], nps_of(nobody)) == (None, None, [])
        first = await seg.profile("ann")
        assert first["nps"] == {"score": 9, "at": at(-2), "category": "promoter"}
        assert first["csat"] == {"score": 2, "at": at(-2)}
        assert nps_of(first) == ["nps:promoter"]

        await seg.send(survey("n0", "ann", "nps", 3, days=-5), survey("c0", "ann", "csat", 5, days=-3))  # late, older
        late = await seg.profile("ann")
        assert (late["nps"], late["csat"], nps_of(late)) == (first["nps"], first["csat"], ["nps:promoter"])
        assert late["event_count"] == 4  # every answer stays in the timeline

        await seg.send(survey("n2", "ann", "nps", "7", days=-1))  # numeric text, as order amounts may be
        assert nps_of(await seg.profile("ann")) == ["nps:passive"]
        await seg.send(survey("n3", "ann", "nps", 6, days=0), survey("n3", "ann", "nps", 6, days=0))  # duplicate
        now = await seg.profile("ann")
        assert (now["nps"], nps_of(now), now["event_count"]) == ({"score": 6, "at": at(0), "category": "detractor"},
                                                                 ["nps:detractor"], 6)
        moves = {key: [h["change"] for h in await seg.history(f"nps:{key}", "ann")]
                 for key in ("promoter", "passive", "detractor")}
        assert moves == {"promoter": ["entered", "exited"], "passive": ["entered", "exited"], "detractor": ["entered"]}
        assert (await seg.profile("ann"))["why"]["nps:detractor"]["reason"].startswith("latest NPS answer 6")

    async def test_bad_answers_change_no_profile_and_are_counted_with_their_event_id(
        self, seg: Segmentation, caplog: pytest.LogCaptureFixture
    ) -> None:
        name = "funnelstream_survey_answers_ignored_total"
        before = {p: metric(name, service="segmentation", problem=p) for p in ("unknown_survey", "score_out_of_range")}
        dead = metric("funnelstream_bus_dead_letters_total", service="segmentation", topic="interactions.v1")
        bad = {"b-ces": ("ces", 5), "b-11": ("nps", 11), "b-neg": ("nps", -1), "b-c0": ("csat", 0), "b-c6": ("csat", 6),
               "b-half": ("nps", 8.5), "b-text": ("nps", "high"), "b-none": ("nps", None), "b-missing": (None, 3)}
        caplog.set_level("WARNING", logger="funnelstream.segmentation.feedback")
        await seg.send(survey("ok", "cy", "nps", 8, days=-3),
                       *(survey(mid, "cy", kind, score, days=-1) for mid, (kind, score) in bad.items()))
        profile = await seg.profile("cy")
        assert (profile["nps"], profile["csat"], nps_of(profile), profile["event_count"]) == (
            {"score": 8, "at": at(-3), "category": "passive"}, None, ["nps:passive"], 1 + len(bad))
        after = {p: metric(name, service="segmentation", problem=p) for p in before}
        assert (after["unknown_survey"] - before["unknown_survey"], after["score_out_of_range"] - before["score_out_of_range"]) == (2, 7)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert all(mid in logged for mid in bad), logged
        assert metric("funnelstream_bus_dead_letters_total", service="segmentation", topic="interactions.v1") == dead
        assert (await report(seg, "nps", **{"from": at(-10), "to": at(1)}))["responses"] == 1
        assert (await report(seg, "csat", **{"from": at(-10), "to": at(1)}))["responses"] == 0


class TestIdentities:
    async def test_answers_follow_a_merge_and_the_latest_of_both_ids_wins(self, seg: Segmentation) -> None:
        await seg.send(survey("a1", None, "nps", 10, days=-1, anon="anon-1"), survey("u1", "dee", "nps", 4, days=-3),
                       survey("u2", "dee", "csat", 5, days=-0.5))
        assert nps_of(await seg.profile("anon-1")) == ["nps:promoter"]
        assert nps_of(await seg.profile("dee")) == ["nps:detractor"]
        await seg.send(identify("i-dee", "dee", days=-0.2, anon="anon-1"))
        merged = await seg.profile("anon-1")
        assert merged["customer_id"] == "dee"
        assert (merged["nps"], merged["csat"], nps_of(merged)) == (
            {"score": 10, "at": at(-1), "category": "promoter"}, {"score": 5, "at": at(-0.5)}, ["nps:promoter"])
        assert await seg.members("nps:detractor") == []
        await seg.send(survey("a0", None, "nps", 2, days=-4, anon="anon-1"))  # late, under the merged id
        assert (await seg.profile("dee"))["nps"]["score"] == 10
        assert (await report(seg, "nps", **{"from": at(-10), "to": at(1)}))["responses"] == 1


class TestCustomRules:
    async def test_rules_see_the_latest_score_and_category(self, seg: Segmentation) -> None:
        await seg.send(survey("a", "amy", "nps", 9, -2), survey("a2", "amy", "csat", 5, -2),
                       survey("b", "ben", "nps", 6, -2), survey("b2", "ben", "csat", 4, -2),
                       survey("c", "cat", "nps", 7, -2), page("d", "dan"))
        await seg.define("unhappy", {"any": [{"field": "nps.category", "op": "eq", "value": "detractor"},
                                             {"field": "csat.score", "op": "lte", "value": 2}]})
        await seg.define("happy", {"all": [{"field": "nps.score", "op": "gte", "value": 9},
                                           {"field": "csat.score", "op": "gte", "value": 4}]})
        assert (await seg.members("unhappy"), await seg.members("happy")) == (["ben"], ["amy"])
        await seg.send(survey("b3", "ben", "nps", 10, -1))
        assert (await seg.members("unhappy"), await seg.members("happy")) == ([], ["amy", "ben"])
        response = await seg.client.post("/api/segments:preview", headers=READER, json={
            "rule": {"field": "nps.category", "op": "in", "value": ["passive", "promoter"]}})
        assert response.json()["count"] == 3
        response = await seg.client.post("/api/segments:preview", headers=READER, json={
            "rule": {"field": "nps.category", "op": "eq", "value": "fan"}})
        assert response.status_code == 422 and "fan" in response.text, response.text


class TestBadRequests:
    @pytest.fixture
    def segmentation_db_url(self) -> None:
        """Checked before any query: the default store (SQLite) is enough."""
        return None

    async def test_a_bad_parameter_is_a_422_naming_it(self, seg: Segmentation) -> None:
        for path, params, where in [
            ("nps", {"breakdown": "plan"}, "breakdown"),
            ("nps", {"breakdown": "segment:no-such"}, "no-such"),
            ("nps", {"from": "2024-03-02T00:00:00Z", "to": "2024-03-01T00:00:00Z"}, "from"),
            ("nps", {"to": "2024-03-01T00:00:00"}, "offset"),
            ("csat", {"from": "yesterday"}, "from"),
        ]:
            response = await seg.client.get(f"/api/feedback/{path}", params=params, headers=READER)
            assert response.status_code == 422, (params, response.text)
            assert where in response.text, (params, response.text)
        assert (await seg.client.get("/api/feedback/nps")).status_code == 401


# --- the reports against a reference -------------------------------------------------------------

USERS = [f"u{i}" for i in range(14)]
MERGED = USERS[:5]  # these also answer as anon-<user> before (and after) they identify
CHANNELS = ("email", "social", None)  # None: no context.channel, so "direct"


class Reference:
    """What the reports must say, worked out from the answers sent, independently of the service."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, str, int, datetime, str]] = {}  # mid -> customer, survey, score, at, channel
        self.plans: dict[str, str] = {}
        self.buyers: set[str] = set()
        self.users = list(USERS)  # those not erased

    def add(self, mid: str, customer: str, kind: str, score: int, days: float, channel: str | None) -> None:
        if (kind == "nps" and 0 <= score <= 10) or (kind == "csat" and 1 <= score <= 5):
            self.answers[mid] = (customer, kind, score, T0 + timedelta(days=days), channel or "direct")

    def latest(self, kind: str, start: datetime, end: datetime) -> dict[str, tuple[int, str]]:
        best: dict[str, tuple[datetime, int, str]] = {}
        for customer, k, score, when, channel in self.answers.values():
            if k == kind and start <= when < end and (customer not in best or when > best[customer][0]):
                best[customer] = (when, score, channel)
        return {c: (score, channel) for c, (_, score, channel) in best.items()}

    @staticmethod
    def nps(scores: list[int]) -> dict[str, Any]:
        p = sum(1 for s in scores if s >= 9)
        d = sum(1 for s in scores if s <= 6)
        return {"responses": len(scores), "promoters": p, "passives": len(scores) - p - d, "detractors": d,
                "nps": pytest.approx(100 * (p - d) / len(scores)) if scores else None}

    @staticmethod
    def csat(scores: list[int]) -> dict[str, Any]:
        if not scores:
            return {"responses": 0, "average": None, "satisfied_share": None}
        return {"responses": len(scores), "average": pytest.approx(sum(scores) / len(scores)),
                "satisfied_share": pytest.approx(sum(1 for s in scores if s in (4, 5)) / len(scores))}

    def breakdown(self, start: datetime, end: datetime, by: str) -> dict[Any, dict[str, Any]]:
        groups: dict[Any, list[int]] = defaultdict(list)
        for customer, (score, channel) in self.latest("nps", start, end).items():
            value: Any = {"channel": channel, "traits.plan": self.plans.get(customer),
                          "lifecycle": "new" if customer in self.buyers else "potential",
                          "segment:nps:promoter": self.category_now(customer) == "promoter"}[by]
            groups[value].append(score)
        return {value: self.nps(scores) for value, scores in groups.items()}

    def category_now(self, customer: str) -> str | None:
        everything = self.latest("nps", T0 - timedelta(days=10_000), T0 + timedelta(days=10_000))
        return category(everything[customer][0]) if customer in everything else None


def random_answers(rng: random.Random, ref: Reference) -> list[list[dict[str, Any]]]:
    """Batches of messages in shuffled order: answers (some bad, some resent), identifies that merge
    anonymous ids, a few orders; answer times are distinct hours so "latest" is never a tie."""
    hours = rng.sample(range(-45 * 24, 1), 110)
    messages = []
    for i, hour in enumerate(hours):
        user = rng.choice(USERS)
        kind = rng.choice(("nps", "nps", "csat"))
        score = rng.randint(-1, 11) if rng.random() < 0.08 else rng.randint(0, 10) if kind == "nps" else rng.randint(1, 5)
        channel = rng.choice(CHANNELS)
        anon = f"anon-{user}" if user in MERGED and rng.random() < 0.5 else None
        messages.append(survey(f"s{i:03}", None if anon else user, kind, score, hour / 24, anon=anon, channel=channel))
        ref.add(f"s{i:03}", user, kind, score, hour / 24, channel)
    for user in USERS:
        plan = rng.choice(("pro", "free", None))
        messages.append(identify(f"i-{user}", user, -50, anon=f"anon-{user}" if user in MERGED else None,
                                 **({"plan": plan} if plan else {})))
        if plan:
            ref.plans[user] = plan
        if rng.random() < 0.4:
            messages.append(order(f"o-{user}", user, -1, revenue=10))
            ref.buyers.add(user)
    rng.shuffle(messages)
    messages += rng.sample(messages, 15)  # redelivered
    cuts = sorted(rng.sample(range(1, len(messages)), 4))
    return [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)], strict=True)]


class TestReports:
    async def test_reports_segments_and_profiles_equal_the_reference_from_random_answers(self, seg: Segmentation) -> None:
        ref = Reference()
        for batch in random_answers(random.Random(11), ref):
            await seg.send(*batch)
        await self.check(seg, ref)
        await self.erase(seg, ref, MERGED[0])  # an erasure takes the customer's answers out of everything
        await self.check(seg, ref)

    async def erase(self, seg: Segmentation, ref: Reference, user: str) -> None:
        assert (await seg.client.delete(f"/api/customers/anon-{user}", headers=ADMIN)).status_code == 202

        async def gone() -> bool:
            return (await seg.get_profile(user)).status_code == 404

        await eventually(gone)
        ref.answers = {mid: a for mid, a in ref.answers.items() if a[0] != user}
        ref.users.remove(user)

    async def check(self, seg: Segmentation, ref: Reference) -> None:
        for key in ("promoter", "passive", "detractor"):
            assert await seg.members(f"nps:{key}") == sorted(u for u in ref.users if ref.category_now(u) == key), key
        latest_csat = ref.latest("csat", T0 - timedelta(days=100), T0 + timedelta(days=1))
        for user in ref.users:
            profile = await seg.profile(user)
            assert (profile["csat"] or {}).get("score") == latest_csat.get(user, (None,))[0], user
            assert (profile["nps"] or {}).get("category") == ref.category_now(user), user
        windows = [(T0 - timedelta(days=60), T0 + timedelta(days=1)), (T0 - timedelta(days=20), T0 - timedelta(days=5)),
                   (T0 - timedelta(days=30), T0), (T0 - timedelta(days=2), T0 - timedelta(days=1))]
        for start, end in windows:
            params = {"from": start.isoformat(), "to": end.isoformat()}
            nps = await report(seg, "nps", **params)
            assert nps == {"from": at((start - T0) / timedelta(days=1)), "to": at((end - T0) / timedelta(days=1)),
                           **Reference.nps([s for s, _ in ref.latest("nps", start, end).values()])}
            csat = await report(seg, "csat", **params)
            assert {k: v for k, v in csat.items() if k not in ("from", "to")} == Reference.csat(
                [s for s, _ in ref.latest("csat", start, end).values()])
            for by in ("channel", "lifecycle", "traits.plan", "segment:nps:promoter"):
                broken = await report(seg, "nps", breakdown=by, **params)
                groups = {g.pop("value"): g for g in broken["breakdown"]}
                assert (broken["breakdown_by"], groups) == (by, ref.breakdown(start, end, by)), (by, start, end)
                sizes = [g["responses"] for g in broken["breakdown"]]
                assert sizes == sorted(sizes, reverse=True)
        assert await report(seg, "nps") == await report(seg, "nps", **{"from": at(-30), "to": at(0)})  # the default window
