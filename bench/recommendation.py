"""Recommendations on the real Online Retail file (issue 16): quality, build time, answer time, RSS.

Quality: the file split by time, the last 30 days held out. Customers who bought before the split
and bought something new to them after it are asked for 10 products from what they did before;
a hit is one of the 10 among what they then bought. Ours (services/recommendation/logic.py) is
printed beside the most-popular baseline on the same split (popular products they had not
ordered), and beside plain cosine co-occurrence (no damping, no recency), with the ratios.
Speed: the model built from the whole file (as the service builds it after a restart: profiles
folded from every fact, then the arrays), one customer's answer and one product's related list
(p50, p99), and the process's peak RSS.
"""
from __future__ import annotations

import random
import resource
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta

from bench.retail import DATA
from services.importer_retail import read_online_retail
from services.recommendation.logic import (
    Fact,
    Model,
    Profile,
    Tuning,
    country_of,
    facts_of,
    profile,
)

HELD_OUT_DAYS = 30
K = 10
PLAIN_COSINE = Tuning(view_weight=0.0, half_life_days=1e9, source_damping=0.5, target_damping=0.5,
                      customer_damping=0.0)


def read() -> tuple[dict[str, list[Fact]], dict[str, str]]:
    """customer -> facts, customer -> country, from the file as `funnelstream import` sends it."""
    facts: dict[str, list[Fact]] = defaultdict(list)
    countries: dict[str, str] = {}
    for planned in read_online_retail(DATA).messages:
        m = planned.message
        at = datetime.fromisoformat(m["timestamp"]).timestamp()
        if m["type"] == "identify":
            if found := country_of(m.get("traits", {}), {}):
                countries[m["userId"]] = found
            continue
        facts[m["userId"]] += facts_of(m["event"], m["properties"], m["messageId"], at)
    return facts, countries


def split(facts: dict[str, list[Fact]]) -> tuple[dict[str, Profile], dict[str, set[str]]]:
    """Profiles from before the split, and what each customer newly ordered after it."""
    end = max(f.at for fs in facts.values() for f in fs)
    cut = end - timedelta(days=HELD_OUT_DAYS).total_seconds()
    train = {c: profile(f for f in fs if f.at < cut) for c, fs in facts.items()}
    train = {c: p for c, p in train.items() if not p.empty}
    held: dict[str, set[str]] = {}
    for c, prof in train.items():
        new = {f.product_id for f in facts[c] if f.at >= cut and f.kind == "order"} - prof.ordered
        if new and prof.bought:
            held[c] = new
    return train, held


def hit_rate(model: Model, train: dict[str, Profile], held: dict[str, set[str]], popular: bool = False) -> float:
    hits = 0
    for c, wanted in held.items():
        if popular:
            got = model.popular_for(train[c].ordered, K)
        else:
            got = [p for p, _ in model.personal(train[c], K)]
        hits += bool(wanted & set(got))
    return hits / len(held)


def quality(facts: dict[str, list[Fact]], countries: dict[str, str]) -> None:
    train, held = split(facts)
    ours = Model(train, countries)
    plain = Model(train, countries, PLAIN_COSINE)
    popular = hit_rate(ours, train, held, popular=True)
    cosine = hit_rate(plain, train, held)
    mine = hit_rate(ours, train, held)
    print(f"   hit rate at {K}, last {HELD_OUT_DAYS} days held out, {len(held)} customers: "
          f"most popular {popular:.3f}, plain cosine {cosine:.3f} ({cosine / popular:.2f}x), "
          f"ours {mine:.3f} ({mine / popular:.2f}x popular, {mine / cosine:.2f}x plain cosine)")


def speed(facts: dict[str, list[Fact]], countries: dict[str, str]) -> None:
    held_before = _rss_mb()
    started = time.perf_counter()
    profiles = {c: profile(fs) for c, fs in facts.items()}
    model = Model(profiles, countries)
    built = time.perf_counter() - started
    held = _rss_mb() - held_before
    started = time.perf_counter()
    Model(profiles, countries)  # what the first request after a consumed batch pays (profiles kept)
    rebuilt = time.perf_counter() - started
    rng = random.Random(16)
    customers = rng.sample(sorted(profiles), 300)
    products = rng.sample(model.products, 300)
    per_customer = _timed(lambda c: model.for_customer(profiles[c], countries.get(c), K), customers)
    per_product = _timed(lambda p: model.related(p, K), products)
    print(f"   whole file: {sum(map(len, facts.values()))} facts, {len(profiles)} customers, "
          f"{len(model.products)} products; built in {built:.2f} s (profiles and arrays), "
          f"arrays again after new events {rebuilt:.2f} s")
    print(f"   customer answer p50 {_ms(per_customer, 50)} ms p99 {_ms(per_customer, 99)} ms; "
          f"related p50 {_ms(per_product, 50)} ms p99 {_ms(per_product, 99)} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)
    print(f"   RSS held by the profiles and model {held:.0f} MB; process peak {peak:.0f} MB (reading the file included)")


def _rss_mb() -> float:
    """The process's resident set now (Linux), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _timed(call, args):  # type: ignore[no-untyped-def]
    times = []
    for arg in args:
        started = time.perf_counter()
        call(arg)
        times.append(time.perf_counter() - started)
    return sorted(times)


def _ms(times: list[float], pct: int) -> str:
    return f"{times[min(len(times) - 1, len(times) * pct // 100)] * 1000:.1f}"


def main() -> None:
    facts, countries = read()
    quality(facts, countries)
    speed(facts, countries)


if __name__ == "__main__":
    main()
