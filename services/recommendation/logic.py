"""Recommendations as pure functions over what customers bought and looked at. No I/O, no clock.

Facts: each product line of an `Order Completed` / `Order Refunded` and each `Product Viewed` /
`Product Added` (`Fact`). A customer's facts fold into a `Profile`: products bought (net of
refunds), products looked at, and the baskets of their orders. A `Model` is built from every
profile: item-to-item co-occurrence over customers, kept as sparse columns (numpy arrays of the
customer x product matrix), so one answer is two sparse products rather than a product x product
table: score(j) = sum_i u_i * C_ij / (n_i^a * n_j^g), C = X' D X, where X holds who bought (1)
or only looked at (`view_weight`) what, D damps customers who buy a great many products, n is
how many customers bought each product (popularity damping), and u is the customer's own
products weighted by recency. Deterministic: recency is measured from the customer's latest
fact, not from the clock, so a replay gives the same answers.
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

ORDERED, REFUNDED, VIEWED, ADDED = "Order Completed", "Order Refunded", "Product Viewed", "Product Added"
EVENTS = (ORDERED, REFUNDED, VIEWED, ADDED)
KINDS = {ORDERED: "order", REFUNDED: "refund", VIEWED: "view", ADDED: "cart"}
MAX_ID = 200  # product ids are columns of the store


class Fact(NamedTuple):
    product_id: str
    kind: str  # order, refund, view, cart
    quantity: float
    order_id: str  # the order a line belongs to ("" for views); an order without one: its event id
    at: float  # epoch seconds


def product_id(item: Any) -> str | None:
    """`product_id`, else `sku`, as text; None when neither is usable."""
    if type(item) is not dict and not isinstance(item, Mapping):  # the ABC check only for what is not a dict
        return None
    for key in ("product_id", "sku"):
        value = item.get(key)
        if type(value) is str:  # the common case, without the checks below
            text = value.strip()
        elif isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
            continue
        else:
            text = str(value).strip()
        if text and len(text) <= MAX_ID and "\x00" not in text:
            return text
    return None


def facts_of(name: str | None, properties: Mapping[str, Any], event_id: str, at: float) -> list[Fact]:
    """The product facts an interaction carries (none for other events or unusable lines)."""
    kind = KINDS.get(name or "")
    if kind is None:
        return []
    if kind in ("view", "cart"):
        found = product_id(properties)
        return [Fact(found, kind, 1.0, "", at)] if found else []
    order = str(properties.get("order_id") or "")[:MAX_ID] or event_id
    products = properties.get("products")
    if kind == "refund" and not products:
        return [Fact("", "refund", 0.0, order, at)]  # the whole order
    lines = []
    for item in products if isinstance(products, list) else []:
        found = product_id(item)
        if found:
            lines.append(Fact(found, kind, _quantity(item.get("quantity")), order, at))
    return lines


def _quantity(value: Any) -> float:
    """Segment's quantity; missing or unusable counts as 1, refunds as positive amounts."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        return 1.0
    return abs(float(value))


def country_of(traits: Mapping[str, Any], context: Mapping[str, Any]) -> str | None:
    """`traits.country`, else `context.traits.country`."""
    for source in (traits, context.get("traits")):
        if source and isinstance(source, Mapping):  # most events name no traits at all
            value = source.get("country")
            if isinstance(value, str) and value.strip():
                return value.strip()[:MAX_ID]
    return None


@dataclass
class Profile:
    """What one customer bought (net of refunds, product -> latest order time), looked at
    (product -> latest view or cart add) and the baskets of their orders (net of refunds)."""

    bought: dict[str, float] = field(default_factory=dict)
    viewed: dict[str, float] = field(default_factory=dict)
    ordered: set[str] = field(default_factory=set)  # ever ordered, refunded or not
    baskets: list[list[str]] = field(default_factory=list)  # each sorted, in order id order

    @property
    def empty(self) -> bool:
        return not self.bought and not self.viewed

    @functools.cached_property
    def products(self) -> tuple[list[str], list[str]]:
        """(bought, only looked at), each sorted: the model's row for this customer."""
        return sorted(self.bought), sorted(self.viewed.keys() - self.bought.keys())


def profile(facts: Iterable[Fact]) -> Profile:
    """Fold a customer's facts, in any order (late and duplicate facts are the caller's to
    dedupe: each fact once)."""
    lines: dict[tuple[str, str], float] = defaultdict(float)  # (order, product) -> net quantity
    last: dict[str, float] = {}
    whole_refunds: set[str] = set()
    result = Profile()
    for f in facts:
        if f.kind in ("view", "cart"):
            result.viewed[f.product_id] = max(f.at, result.viewed.get(f.product_id, f.at))
        elif f.kind == "refund" and not f.product_id:
            whole_refunds.add(f.order_id)
        else:
            lines[(f.order_id, f.product_id)] += f.quantity if f.kind == "order" else -f.quantity
            if f.kind == "order":
                result.ordered.add(f.product_id)
                last[f.product_id] = max(f.at, last.get(f.product_id, f.at))
    net: dict[str, float] = defaultdict(float)
    baskets: dict[str, set[str]] = defaultdict(set)
    for (order, product), quantity in lines.items():
        if order in whole_refunds:
            continue
        net[product] += quantity
        if quantity > 0:
            baskets[order].add(product)
    result.bought = {p: last[p] for p, q in net.items() if q > 0 and p in last}
    result.baskets = [sorted(b & result.bought.keys()) for _, b in sorted(baskets.items()) if b & result.bought.keys()]
    return result


@dataclass(frozen=True)
class Tuning:
    """Measured on the Online Retail file by bench/recommendation.py (hit rate at 10)."""

    view_weight: float = 0.3  # a product only looked at, against one bought
    half_life_days: float = 60.0  # a customer's own products count half after this long
    source_damping: float = 0.5  # n_i exponent: how much a popular source product's links count
    target_damping: float = 0.7  # n_j exponent: how much a popular candidate is held back
    customer_damping: float = 0.7  # each co-buyer counts 1 / (products they have)^this
    because: int = 3  # purchases named per item
    min_country_customers: int = 5  # below this, a country's popular list is not used


Ranked = tuple[NDArray[np.int64], NDArray[np.float64]]  # product slots, most first, and their counts


class Item(NamedTuple):
    product_id: str
    score: float
    because: list[str]


class Related(NamedTuple):
    product_id: str
    score: float
    together: int


class Answer(NamedTuple):
    strategy: str  # co_occurrence, popular_in_country, popular
    items: list[Item]


class Model:
    """Every profile as sparse arrays; answers for one customer or one product."""

    def __init__(self, profiles: Mapping[str, Profile], countries: Mapping[str, str], tuning: Tuning = Tuning()) -> None:
        self.tuning = tuning
        self.profiles = dict(profiles)
        customers = sorted(profiles)
        rows_of = [profiles[c].products for c in customers]
        names = sorted({p for bought, viewed in rows_of for p in (*bought, *viewed)})
        self.products = names
        self.slot = {p: i for i, p in enumerate(names)}
        # Per customer, their bought then their only-viewed products: one flat run each.
        runs = np.array([len(part) for row in rows_of for part in row], dtype=np.int64)
        flat = [p for row in rows_of for part in row for p in part]
        bought = np.repeat(np.tile(np.array([True, False]), len(customers)), runs)
        self.rows = np.repeat(np.arange(len(customers)), runs.reshape(-1, 2).sum(axis=1))
        self.cols = np.array([self.slot[p] for p in flat], dtype=np.int64)
        self.data = np.where(bought, 1.0, tuning.view_weight)
        buyers_by_country: dict[str, list[int]] = defaultdict(list)
        for c, customer in enumerate(customers):
            if profiles[customer].bought and customer in countries:
                buyers_by_country[countries[customer]].append(c)
        n_customers = len(profiles)
        self.buyers = np.bincount(self.cols[bought], minlength=len(names)).astype(np.float64)
        size = np.bincount(self.rows, weights=self.data, minlength=n_customers)
        self.customer_weight = 1.0 / np.maximum(size, 1.0) ** tuning.customer_damping
        by_customer = np.argsort(self.rows, kind="stable")  # each customer's products, for `because`
        self.customer_cols, self.customer_data = self.cols[by_customer], self.data[by_customer]
        self.customer_start = np.concatenate(([0], np.cumsum(np.bincount(self.rows, minlength=n_customers))))
        self.popular = _ranked(self.buyers)
        self.by_country: dict[str, Ranked] = {}
        for country, members in buyers_by_country.items():
            if len(members) >= tuning.min_country_customers:
                mask = np.isin(self.rows, np.array(members)) & bought
                self.by_country[country] = _ranked(np.bincount(self.cols[mask], minlength=len(names)).astype(np.float64))
        self._orders(profiles)

    def _orders(self, profiles: Mapping[str, Profile]) -> None:
        baskets = [basket for customer in sorted(profiles) for basket in profiles[customer].baskets]
        self.order_rows = np.repeat(np.arange(len(baskets)), [len(b) for b in baskets])
        self.order_cols = np.array([self.slot[p] for basket in baskets for p in basket], dtype=np.int64)
        self.in_orders = np.bincount(self.order_cols, minlength=len(self.products)).astype(np.float64)
        self.orders = len(baskets)

    def scores(self, own: Mapping[str, float]) -> NDArray[np.float64]:
        """score(j) for every product, from the customer's own products weighted `own`."""
        t = self.tuning
        u = np.zeros(len(self.products))
        for p, w in own.items():
            if p in self.slot:
                u[self.slot[p]] = w
        source = u / np.maximum(self.buyers, 1.0) ** t.source_damping
        per_customer = np.bincount(self.rows, weights=self.data * source[self.cols],
                                   minlength=len(self.customer_weight)) * self.customer_weight
        co = np.bincount(self.cols, weights=self.data * per_customer[self.rows], minlength=len(self.products))
        result: NDArray[np.float64] = co / np.maximum(self.buyers, 1.0) ** t.target_damping
        return result

    def own_weights(self, prof: Profile) -> dict[str, float]:
        """The customer's products, a view counting `view_weight`, halved every `half_life_days`
        before their latest fact."""
        t = self.tuning
        latest = max([*prof.bought.values(), *prof.viewed.values()])
        half_life = t.half_life_days * 86400.0
        weights = {p: t.view_weight * 0.5 ** ((latest - at) / half_life) for p, at in prof.viewed.items()}
        weights |= {p: 0.5 ** ((latest - at) / half_life) for p, at in prof.bought.items()}
        return weights

    def for_customer(self, prof: Profile | None, country: str | None, limit: int) -> Answer:
        """Products not ordered yet, from what the customer bought and looked at; with nothing to
        go on, what customers of the same country buy most, else what everyone buys most."""
        if prof is not None and not prof.empty:
            own = self.own_weights(prof)
            items = self.personal(prof, limit)
            if items:
                return Answer("co_occurrence", [Item(p, s, self.because(own, p)) for p, s in items])
        exclude = prof.ordered if prof is not None else set()
        if country is not None and country in self.by_country:
            return Answer("popular_in_country", self._popular(self.by_country[country], exclude, limit))
        return Answer("popular", self._popular(self.popular, exclude, limit))

    def personal(self, prof: Profile, limit: int) -> list[tuple[str, float]]:
        """The customer's best products not ordered yet, with their scores."""
        return self._best(self.scores(self.own_weights(prof)), prof.ordered, limit)

    def _best(self, scores: NDArray[np.float64], exclude: set[str], limit: int) -> list[tuple[str, float]]:
        for p in exclude:
            if p in self.slot:
                scores[self.slot[p]] = 0.0
        top = np.argsort(-scores, kind="stable")[:limit]
        return [(self.products[j], float(scores[j])) for j in top if scores[j] > 0]

    def because(self, own: Mapping[str, float], target: str) -> list[str]:
        """The customer's purchases that led to `target`, the strongest first."""
        t = self.tuning
        j = self.slot[target]
        hit = self.cols == j
        customers, weights = self.rows[hit], self.data[hit] * self.customer_weight[self.rows[hit]]
        starts, ends = self.customer_start[customers], self.customer_start[customers + 1]
        lengths = ends - starts
        at = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths) + np.arange(lengths.sum())
        together = np.bincount(self.customer_cols[at], weights=self.customer_data[at] * np.repeat(weights, lengths),
                               minlength=len(self.products))
        contributions = []
        for p, w in own.items():
            i = self.slot.get(p)
            if i is not None and i != j and together[i] > 0:
                contributions.append((-w * together[i] / max(self.buyers[i], 1.0) ** t.source_damping, p))
        return [p for _, p in sorted(contributions)[:t.because]]

    def popular_for(self, exclude: set[str], limit: int) -> list[str]:
        return [item.product_id for item in self._popular(self.popular, exclude, limit)]

    def _popular(self, ranked: Ranked, exclude: set[str], limit: int) -> list[Item]:
        found: list[Item] = []
        for k, count in zip(ranked[0].tolist(), ranked[1].tolist(), strict=True):
            if len(found) == limit:
                break
            if self.products[k] not in exclude:
                found.append(Item(self.products[k], count, []))
        return found

    def related(self, target: str, limit: int) -> list[Related]:
        """Bought together: products sharing orders with `target`, by cosine over orders."""
        j = self.slot.get(target)
        if j is None:
            return []
        in_order = np.zeros(self.orders)
        in_order[self.order_rows[self.order_cols == j]] = 1.0
        together = np.bincount(self.order_cols, weights=in_order[self.order_rows], minlength=len(self.products))
        together[j] = 0.0
        scores = together / np.sqrt(np.maximum(self.in_orders, 1.0) * max(self.in_orders[j], 1.0))
        top = np.lexsort((np.arange(len(scores)), -scores))[:limit]
        return [Related(self.products[k], round(float(scores[k]), 6), int(together[k])) for k in top if together[k] > 0]


def _ranked(counts: NDArray[np.float64]) -> Ranked:
    """Products by count, most first; ties by product id (slots are in product id order)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    order = order[counts[order] > 0]
    return order, counts[order]
