"""The demo shop of `make demo`: a generated coffee-and-tea web shop, as Segment messages.

    python -m services.demo                        # what `make demo` runs: serve, load once, keep serving
    python -m services.demo generate shop.jsonl --customers 300 --seed 7 --now 2026-06-01T00:00:00Z

The shop's shape (`generate(seed, customers, now)`; the same arguments give the same bytes and
message ids, a different seed a different shop; `now` defaults to the current minute, so a demo
started on another day looks fresh):
- ~20k customers, first seen over the last 180 days (more of them lately: the shop grows), plus
  about 1% of regulars from the half year before, most of whom stopped buying (churned).
- Every visit comes from one traffic source, carried by each of its messages as an SDK keeps it
  for the session: `direct`, `search` / `social` / `referral` (by referrer), `email` / `ads` /
  `other` (by utm_source and utm_medium in the page URL and `context.campaign`).
- Visits are `page` messages; about 60% of visitors view products of the catalogue (`Product
  Viewed`: product_id, sku, name, price, category), 40% of those add one (`Product Added`), 65%
  of those start a checkout (`Checkout Started`) and 75% of those order (`Order Completed`:
  order_id, revenue, currency, products[]). A third of buyers order again, some many times.
- About 6% of orders are refunded, in part or whole, days later (`Order Refunded` with the
  order's order_id and a positive revenue, as the Segment spec and the Online Retail import have).
- Customers stay anonymous (`anonymousId`) until they sign up (`identify` with email, name and
  country traits, then `Signed Up`) or check out; a quarter of those browse for days first and
  are identified late, the identify linking their anonymous history to their userId.
- Surveys (`Survey Responded`, survey `nps` 0-10 or `csat` 1-5, `score`) after some orders.
- About 4% of visitors are businesses asking for wholesale: `Lead Created`, `Lead Qualified`,
  `Meeting Booked`, `Quote Sent` and sometimes a large order (the `sales` funnel).
"""
from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

SHOP_URL = "https://shop.example.com"
DEFAULT_SEED = 42
DEFAULT_CUSTOMERS = 20_000
HISTORY_DAYS = 180
CURRENCY = "EUR"
NAMESPACE = uuid.UUID("0b6b2a3e-5d0c-4f1e-8a77-3c9d2e4f6a10")  # message ids: uuid5 of seed, customer, number


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    price: float
    category: str

    def properties(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "sku": self.product_id.upper(), "name": self.name,
                "price": self.price, "category": self.category}


def _catalogue() -> tuple[Product, ...]:
    ranges = {
        "Coffee": ["Ethiopia Yirgacheffe", "Colombia Huila", "Kenya AA", "Brazil Cerrado", "Guatemala Antigua",
                   "Espresso Blend", "Decaf Swiss Water", "Sumatra Mandheling"],
        "Tea": ["Darjeeling First Flush", "Sencha", "Earl Grey", "Assam Breakfast", "Jasmine Pearls", "Rooibos Vanilla"],
        "Brewing": ["Pour-over Dripper", "Gooseneck Kettle", "Burr Grinder", "French Press", "Moka Pot",
                    "Espresso Machine", "Paper Filters x100", "Digital Scale"],
        "Cups": ["Ceramic Mug", "Double-wall Glass", "Travel Tumbler", "Espresso Cups x2", "Teapot 1l"],
        "Gifts": ["Tasting Box", "Gift Card 25", "Gift Card 50", "Subscription 3 months"],
    }
    prices = {"Coffee": (9.5, 24.0), "Tea": (6.5, 19.0), "Brewing": (8.0, 320.0), "Cups": (12.0, 45.0), "Gifts": (25.0, 89.0)}
    rng = random.Random("funnelstream-demo-catalogue")
    products = []
    for category, names in ranges.items():
        low, high = prices[category]
        for n, name in enumerate(names, 1):
            price = round(math.exp(rng.uniform(math.log(low), math.log(high))) * 2) / 2 - 0.01
            products.append(Product(f"{category[:3].lower()}-{n:03d}", name, round(price, 2), category))
    return tuple(products)


CATALOGUE = _catalogue()
CATEGORIES = tuple(sorted({p.category for p in CATALOGUE}))

# Where first visits come from (the acquisition mix) and where returning customers come from.
FIRST_VISIT = {"search": 30, "direct": 18, "social": 18, "ads": 15, "email": 6, "referral": 10, "other": 3}
RETURN_VISIT = {"direct": 40, "email": 25, "search": 20, "social": 8, "ads": 5, "referral": 2}
REFERRERS = {
    "search": ["https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/", "https://www.ecosia.org/"],
    "social": ["https://www.instagram.com/", "https://www.facebook.com/", "https://t.co/x8Jd2", "https://www.pinterest.com/"],
    "referral": ["https://brewguide.example.net/best-grinders", "https://coffeeblog.example.org/beans-2026",
                 "https://www.seriouseats.com/coffee"],
}
CAMPAIGNS = {  # (utm_source, utm_medium, utm_campaign)
    "email": [("newsletter", "email", "weekly-roast"), ("klaviyo", "email", "back-in-stock")],
    "ads": [("google", "cpc", "brand"), ("facebook", "paid_social", "autumn-blends"), ("bing", "cpc", "grinders")],
    "other": [("podcast", "audio", "morning-cup")],
}
PAGES = ["Home", "Coffee", "Tea", "Brewing Guides", "About", "Shipping"]
COUNTRIES = {"DE": 30, "FR": 15, "NL": 12, "GB": 12, "ES": 8, "IT": 8, "SE": 5, "US": 10}
FIRST_NAMES = ["Ana", "Ben", "Chloe", "David", "Elif", "Finn", "Greta", "Hugo", "Ines", "Jonas", "Kai", "Lena",
               "Marta", "Noah", "Olga", "Paul", "Rosa", "Sami", "Tara", "Yusuf"]
LAST_NAMES = ["Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hansen", "Jansen", "Keller", "Lopez",
              "Moreau", "Novak", "Okafor", "Rossi", "Schmidt", "Weber"]
NPS_SCORES = {10: 22, 9: 22, 8: 17, 7: 13, 6: 8, 5: 6, 4: 4, 3: 3, 2: 2, 1: 1, 0: 2}  # NPS about +25
COMPANIES = ["Corner Cafe", "Bean There", "Office Hub", "Hotel Lindner", "Daily Grind", "Brew Bar", "Cowork Loft"]


def generate(seed: int = DEFAULT_SEED, customers: int = DEFAULT_CUSTOMERS, now: datetime | None = None) -> list[dict[str, Any]]:
    """The shop's messages in time order (ties in generation order): everything before `now`."""
    anchor = _minute(now or datetime.now(UTC))
    messages = [m for n in range(customers) for m in _Customer(seed, n, anchor).journey()]
    messages.sort(key=lambda m: m["timestamp"])  # stable: deterministic for equal times
    return messages


def lines(messages: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """One Segment message per line, as `funnelstream import --format jsonl` reads them."""
    for message in messages:
        yield orjson.dumps(message) + b"\n"


def write_jsonl(messages: Iterable[dict[str, Any]], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as out:
        for line in lines(messages):
            out.write(line)
            count += 1
    return count


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _minute(at: datetime) -> datetime:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(second=0, microsecond=0)


class _Customer:
    """One customer's journey: visits, then as far down the funnel as their dice say."""

    def __init__(self, seed: int, n: int, now: datetime) -> None:
        self.rng = random.Random(f"funnelstream-demo:{seed}:{n}")
        self.seed, self.n, self.now = seed, n, now
        self.anonymous_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.user_id = f"user-{n:05d}"
        self.identified = False
        self.messages: list[dict[str, Any]] = []
        self.context: dict[str, Any] = {}
        self.orders: list[tuple[datetime, dict[str, Any]]] = []
        self.at = now

    def journey(self) -> list[dict[str, Any]]:
        rng = self.rng
        regular = rng.random() < 0.012  # a customer from before the 180 days: buys, mostly stops
        days_ago = rng.uniform(HISTORY_DAYS + 5, 2 * HISTORY_DAYS) if regular else HISTORY_DAYS * rng.random() ** 1.15
        self.at = self.now - timedelta(days=days_ago)
        self.visit(_pick(rng, FIRST_VISIT))
        self.browse(pages=rng.randint(1, 3))
        will_identify = regular or rng.random() < 0.30
        if will_identify and rng.random() < 0.25:  # identified late: anonymous browsing first
            for _ in range(rng.randint(1, 3)):
                self.later_visit(days=rng.uniform(1, 12))
                self.view_products(rng.randint(1, 3))
        if rng.random() < 0.04:
            return self.wholesale()
        viewer = regular or rng.random() < 0.60
        if will_identify:
            self.sign_up()
        if viewer:
            self.view_products(rng.randint(1, 4))
            if regular or rng.random() < 0.40:
                self.shop_and_maybe_order(buys=regular or rng.random() < 0.65 * 0.75)
        return [m for m in self.messages if m["timestamp"] <= iso(self.now)]

    def shop_and_maybe_order(self, buys: bool) -> None:
        rng = self.rng
        basket = self.add_to_cart()
        if not (buys or rng.random() < 0.65):
            return
        self.checkout(basket)
        if not buys:
            return
        self.order(basket)
        repeats = 0
        while rng.random() < (0.34 if repeats == 0 else 0.55) and repeats < 12:
            repeats += 1
            self.later_visit(days=rng.expovariate(1 / 24))
            self.view_products(rng.randint(1, 2))
            basket = self.add_to_cart()
            self.checkout(basket)
            self.order(basket)
        self.aftermath()

    def checkout(self, basket: list[dict[str, Any]]) -> None:
        self.step()
        self.track("Checkout Started", {"value": _total(basket), "currency": CURRENCY, "products": basket})

    # -- visits ---------------------------------------------------------------------------------
    def visit(self, channel: str) -> None:
        """A new visit from `channel`; its first message is the landing page."""
        rng = self.rng
        page = rng.choice(PAGES)
        path = "/" if page == "Home" else "/" + page.lower().replace(" ", "-")
        self.context = _visit_context(rng, channel, path)
        self.message("page", name=page, properties={"path": path, "url": self.context["page"]["url"], "title": page})

    def later_visit(self, days: float) -> None:
        self.at += timedelta(days=days, seconds=self.rng.uniform(0, 36_000))
        self.visit(_pick(self.rng, RETURN_VISIT if self.identified else FIRST_VISIT))

    def browse(self, pages: int) -> None:
        for _ in range(pages - 1):
            self.step()
            page = self.rng.choice(PAGES)
            self.message("page", name=page, properties={"path": "/" + page.lower().replace(" ", "-"), "title": page})

    def view_products(self, count: int) -> None:
        category = self.rng.choice(CATEGORIES)
        for _ in range(count):
            self.step()
            self.track("Product Viewed", self.product(category).properties())

    def product(self, category: str | None = None) -> Product:
        same = [p for p in CATALOGUE if p.category == category]
        return self.rng.choice(same if same and self.rng.random() < 0.7 else CATALOGUE)

    # -- identity -------------------------------------------------------------------------------
    def sign_up(self) -> None:
        self.step()
        self.identify()
        self.track("Signed Up", {"method": self.rng.choice(["email", "email", "google", "apple"])})

    def identify(self, **traits: Any) -> None:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        self.identified = True
        self.message("identify", traits={"email": f"{first}.{last}.{self.n}@example.com".lower(),
                                         "name": f"{first} {last}", "country": _pick(rng, COUNTRIES), **traits})

    # -- buying ---------------------------------------------------------------------------------
    def add_to_cart(self) -> list[dict[str, Any]]:
        basket = []
        for product in self.rng.sample(CATALOGUE, self.rng.choice([1, 1, 1, 2, 2, 3])):
            self.step()
            item = {**product.properties(), "quantity": self.rng.choice([1, 1, 1, 2, 3])}
            self.track("Product Added", item)
            basket.append(item)
        return basket

    def order(self, basket: list[dict[str, Any]], **extra: Any) -> None:
        self.step()
        if not self.identified:
            self.identify()  # guest checkout: the email for the receipt
        order_id = f"ord-{self.seed}-{self.n:05d}-{len(self.orders) + 1}"
        properties = {"order_id": order_id, "revenue": _total(basket), "currency": CURRENCY, "products": basket, **extra}
        self.track("Order Completed", properties)
        self.orders.append((self.at, properties))

    def aftermath(self) -> None:
        """Refunds and survey answers, days after the orders they are about."""
        rng, last_at = self.rng, self.at
        for at, order in self.orders:
            if rng.random() < 0.06:
                returned = order["products"][: rng.randint(1, len(order["products"]))]
                self.at = at + timedelta(days=rng.uniform(2, 20))
                self.track("Order Refunded", {"order_id": order["order_id"], "revenue": _total(returned),
                                              "currency": CURRENCY, "products": returned})
            if rng.random() < 0.25:
                self.at = at + timedelta(days=rng.uniform(1, 4))
                self.track("Survey Responded", {"survey": "csat", "score": _pick(rng, {5: 45, 4: 30, 3: 12, 2: 8, 1: 5})})
        if rng.random() < 0.35:
            self.at = self.orders[0][0] + timedelta(days=rng.uniform(7, 14))
            score = _pick(rng, NPS_SCORES)
            self.track("Survey Responded", {"survey": "nps", "score": score, "order_id": self.orders[0][1]["order_id"]})
        self.at = last_at

    def wholesale(self) -> list[dict[str, Any]]:
        """A business asking for wholesale prices: the sales funnel, step by step, fewer each time."""
        rng = self.rng
        company = rng.choice(COMPANIES)
        self.step()
        self.identify(company=company)
        self.track("Lead Created", {"lead_source": "wholesale form", "company": company})
        for event, share, days in (("Lead Qualified", 0.65, 3), ("Meeting Booked", 0.6, 5), ("Quote Sent", 0.7, 3)):
            if rng.random() >= share:
                return self.clipped()
            self.at += timedelta(days=rng.uniform(0.5, days))
            self.track(event, {"company": company} | ({"value": rng.randint(8, 60) * 50} if event == "Quote Sent" else {}))
        if rng.random() < 0.5:
            self.at += timedelta(days=rng.uniform(3, 14))
            basket = [{**p.properties(), "quantity": rng.randint(5, 40)} for p in rng.sample(CATALOGUE[:14], 2)]
            self.order(basket, channel="wholesale")
            self.aftermath()
        return self.clipped()

    def clipped(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["timestamp"] <= iso(self.now)]

    # -- messages -------------------------------------------------------------------------------
    def step(self) -> None:
        self.at += timedelta(seconds=self.rng.uniform(15, 240))

    def track(self, event: str, properties: dict[str, Any]) -> None:
        self.message("track", event=event, properties=properties)

    def message(self, kind: str, **fields: Any) -> None:
        ids = {"userId": self.user_id, "anonymousId": self.anonymous_id} if self.identified else {"anonymousId": self.anonymous_id}
        number = len(self.messages)
        message_id = str(uuid.uuid5(NAMESPACE, f"{self.seed}/{self.n}/{number}"))
        self.messages.append({"type": kind, "messageId": message_id, **ids, **fields,
                              "context": self.context, "timestamp": iso(self.at)})


def _visit_context(rng: random.Random, channel: str, path: str) -> dict[str, Any]:
    """The traffic source as an SDK reports it: a referrer, or utm parameters (and `campaign`)."""
    page: dict[str, Any] = {"path": path, "url": SHOP_URL + path}
    context: dict[str, Any] = {"page": page}
    if channel in REFERRERS:
        page["referrer"] = rng.choice(REFERRERS[channel])
    elif channel in CAMPAIGNS:
        source, medium, name = rng.choice(CAMPAIGNS[channel])
        page["url"] += f"?utm_source={source}&utm_medium={medium}&utm_campaign={name}"
        context["campaign"] = {"source": source, "medium": medium, "name": name}
    return context


def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _total(items: list[dict[str, Any]]) -> float:
    return round(sum(item["price"] * item["quantity"] for item in items), 2)
