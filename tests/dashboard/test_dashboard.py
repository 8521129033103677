"""The dashboard in a real browser against a live gateway loaded with a hand-made shop of four
customers: every page renders without console errors at desktop and phone widths, the funnel page
shows the report API's numbers (and the hand-worked ones), the follow-up buttons change the
follow-ups in the API, a reader sees no write buttons, API errors are shown in words."""
from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.dashboard.conftest import DESKTOP, PHONE, LiveGateway, open_page

NOW = datetime.now(UTC).replace(microsecond=0)


def at(days: float, hours: float = 0) -> str:
    return (NOW - timedelta(days=days) + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def track(user: str, event: str, when: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "timestamp": when, "properties": properties,
            "messageId": f"{user}-{event}-{when}"}


def page_view(user: str, when: str) -> dict[str, Any]:
    return {"type": "page", "userId": user, "name": "Home", "timestamp": when, "messageId": f"{user}-page-{when}"}


SHOP = [
    # alice: every lifecycle stage (two orders)
    page_view("alice", at(5)),
    {"type": "identify", "userId": "alice", "traits": {"email": "alice@example.com", "name": "Alice Example"},
     "timestamp": at(5, 1), "messageId": "alice-identify"},
    track("alice", "Product Viewed", at(5, 2), product_id="p1"),
    track("alice", "Order Completed", at(4), order_id="a1", revenue=1200.5,
          products=[{"product_id": "p1", "quantity": 1, "price": 1200.5}]),
    track("alice", "Order Completed", at(2), order_id="a2", revenue=50,
          products=[{"product_id": "p2", "quantity": 1, "price": 50}]),
    # bob: up to purchase (one order: lifecycle:new, so a welcome follow-up)
    page_view("bob", at(3)),
    track("bob", "Signed Up", at(3, 0.5)),
    track("bob", "Product Viewed", at(3, 1), product_id="p1"),
    track("bob", "Order Completed", at(3, 2), order_id="b1", revenue=30,
          products=[{"product_id": "p1", "quantity": 1, "price": 20}, {"product_id": "p3", "quantity": 1, "price": 10}]),
    # carol: up to interest; dave: awareness only
    page_view("carol", at(2)),
    track("carol", "Signed Up", at(2, 1)),
    page_view("dave", at(1)),
    # survey answers (docs/api.md section 11): carol's later 9 replaces her 8
    track("alice", "Survey Responded", at(1, 1), survey="nps", score=10),
    track("alice", "Survey Responded", at(1, 2), survey="csat", score=5),
    track("bob", "Survey Responded", at(1, 3), survey="nps", score=3),
    track("bob", "Survey Responded", at(1, 4), survey="csat", score=2),
    track("carol", "Survey Responded", at(1, 5), survey="nps", score=8),
    track("carol", "Survey Responded", at(1, 6), survey="nps", score=9),
]
# Hand-worked from the answers above: NPS over alice 10, bob 3, carol 9 -> 2 promoters, 0 passives,
# 1 detractor, 100 x (2 - 1) / 3 = +33.3; CSAT alice 5, bob 2 -> average 3.5, 50% satisfied.
# Recommendations (co-buyers): alice bought p1, p2 and bob p1, p3, so alice gets p3 and bob p2,
# each because of p1.
FEEDBACK = {"nps": {"responses": "3", "promoters": "2", "passives": "0", "detractors": "1", "nps": "+33.3"},
            "csat": {"responses": "2", "average": "3.50", "satisfied_share": "50.0%"}}

# Hand-worked from SHOP (90-day window, all still open: who stopped is in progress, not dropped).
# interest median: alice 1 h, bob 30 min, carol 1 h -> 1 h; consideration: alice 1 h, bob 30 min
# -> mean of the two = 45 min; purchase: alice 22 h, bob 1 h -> 11.5 h; loyalty: alice 2 days.
EXPECTED = {
    "awareness": {"entered": "4"},
    "interest": {"entered": "3", "converted_from_previous_rate": "75.0%", "drop_off": "0", "in_progress": "1",
                 "median_seconds_from_previous": 3600},
    "consideration": {"entered": "2", "converted_from_previous_rate": "66.7%", "drop_off": "0", "in_progress": "1",
                      "median_seconds_from_previous": 2700},
    "purchase": {"entered": "2", "converted_from_previous_rate": "100.0%", "drop_off": "0", "in_progress": "0",
                 "median_seconds_from_previous": 11.5 * 3600},
    "loyalty": {"entered": "1", "converted_from_previous_rate": "50.0%", "drop_off": "0", "in_progress": "1",
                "median_seconds_from_previous": 2 * 86400},
}


def welcome_of(live: LiveGateway, customer: str) -> dict[str, Any] | None:
    items = live.api("GET", "/api/followups", params={"customer_id": customer}).json()["items"]
    return next((f for f in items if f["policy"] == "welcome_new"), None)


@pytest.fixture(scope="module")
def shop(live: LiveGateway) -> LiveGateway:
    live.send(SHOP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = live.api("GET", "/api/funnels/lifecycle/report").json()
        entered = [s["entered"] for s in report.get("stages", [])]
        profile = live.api("GET", "/api/customers/alice")
        carol = live.api("GET", "/api/customers/carol")
        if entered == [4, 3, 2, 2, 1] and profile.status_code == 200 and welcome_of(live, "bob") \
                and carol.status_code == 200 and (carol.json().get("nps") or {}).get("score") == 9 \
                and live.api("GET", "/api/recommendations/customers/bob").json().get("items"):
            return live
        time.sleep(0.2)
    raise AssertionError(f"the services did not take in the shop: {entered}\n{live.log.read_text()[-2000:]}")


PAGES = {
    "overview": "/app/",
    "journey": "/app/journey",
    "funnels": "/app/funnels",
    "funnel": "/app/funnels/lifecycle?breakdown=channel",
    "segments": "/app/segments",
    "segment": "/app/segments/lifecycle:new",
    "customer": "/app/customers/alice",
    "followups": "/app/followups",
    "signin": "/app/signin",
}


class TestEmptyProduct:
    """Runs first, on the live gateway before the shop is loaded (the `shop` fixture is later)."""

    def test_an_empty_product_shows_what_to_do_next(self, browser: Any, live: LiveGateway) -> None:
        context, page, errors = open_page(browser, live)
        for path in ("/app/", "/app/journey", "/app/funnels/lifecycle", "/app/segments", "/app/followups"):
            assert page.goto(live.url + path, wait_until="domcontentloaded").status == 200
            empty = page.locator("[data-empty]")
            assert empty.count(), path
            text = empty.first.inner_text()
            assert "make demo" in text or "POST /api/" in text, (path, text)
            page.screenshot(path=str(live.shots / f"empty-{path.strip('/').replace('/', '-')}-1280.png"), full_page=True)
        assert "/v1/batch" in page.goto(live.url + "/app/", wait_until="domcontentloaded").text()
        assert not errors, errors
        context.close()


class TestPages:
    @pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
    def test_every_page_renders_without_console_errors(self, browser: Any, shop: LiveGateway, viewport: dict[str, int]) -> None:
        context, page, errors = open_page(browser, shop, viewport)
        for name, path in PAGES.items():
            response = page.goto(shop.url + path, wait_until="domcontentloaded")
            assert response.status == 200, (path, response.status)
            assert page.locator("h1").count() == 1, path
            assert not page.locator("[data-error]").count(), (path, page.locator("[data-error]").all_inner_texts())
            page.screenshot(path=str(shop.shots / f"{name}-{viewport['width']}.png"), full_page=True)
            # nothing wider than the screen: tables scroll inside their own box
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], path
        assert not errors, errors
        context.close()

    def test_root_redirects_and_a_loopback_dev_server_signs_in_as_admin(self, browser: Any, shop: LiveGateway) -> None:
        context, page, _errors = open_page(browser, shop)
        page.goto(shop.url + "/", wait_until="domcontentloaded")
        assert page.url == shop.url + "/app/"
        assert page.locator("[data-role]").get_attribute("data-role") == "admin"
        context.close()

    def test_pages_are_keyboard_reachable(self, browser: Any, shop: LiveGateway) -> None:
        context, page, _ = open_page(browser, shop)
        page.goto(shop.url + "/app/", wait_until="domcontentloaded")
        reached = []
        for _ in range(8):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.getAttribute('href')"))
        assert {"/app/journey", "/app/funnels", "/app/segments", "/app/followups"} <= set(reached), reached
        page.keyboard.press("Tab")  # Enter on a focused link follows it
        page.focus("a[href='/app/journey']")
        page.keyboard.press("Enter")
        page.wait_for_url("**/app/journey")
        context.close()


class TestNumbers:
    def test_funnel_page_shows_the_report_apis_numbers(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/funnels/lifecycle", wait_until="domcontentloaded")
        summary = page.locator("[data-report-from]")
        report = shop.api("GET", "/api/funnels/lifecycle/report", params={
            "from": summary.get_attribute("data-report-from"), "to": summary.get_attribute("data-report-to")}).json()
        for stage in report["stages"]:
            hook = page.locator(f'[data-stage="{stage["stage"]}"]')
            shown = {f: hook.locator(f'[data-field="{f}"]') for f in EXPECTED[stage["stage"]]}
            assert int(shown["entered"].inner_text().replace(",", "")) == stage["entered"]
            for field_name, element in shown.items():
                expected = EXPECTED[stage["stage"]][field_name]
                if field_name == "median_seconds_from_previous":
                    assert float(element.get_attribute("data-value")) == pytest.approx(stage[field_name])
                    assert float(element.get_attribute("data-value")) == pytest.approx(expected, abs=1)
                elif field_name == "converted_from_previous_rate":
                    assert element.inner_text() == f"{stage[field_name] * 100:.1f}%" == expected
                else:
                    assert element.inner_text() == f"{stage[field_name]:,}" == expected
        assert page.locator('[data-stage="interest"] [data-field="median_seconds_from_previous"]').inner_text() == "1 h"
        assert page.locator('[data-stage="loyalty"] [data-field="median_seconds_from_previous"]').inner_text() == "2 d"
        assert page.locator('[data-field="overall_conversion_rate"]').first.inner_text() == "25.0%"
        assert not errors, errors
        context.close()

    def test_stalled_customers_of_a_stage(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/funnels/lifecycle", wait_until="domcontentloaded")
        page.select_option("select[name=stalled]", "interest")
        page.fill("input[name=stalled_days]", "1")
        page.click("#stalled button[type=submit]")
        page.wait_for_url("**stalled=interest**")
        # carol signed up 47 hours ago and went no further; alice and bob went on, dave never came
        assert page.locator("#stalled [data-customer-id]").evaluate_all("rows => rows.map(r => r.dataset.customerId)") == ["carol"]
        page.fill("input[name=stalled_days]", "3")
        page.click("#stalled button[type=submit]")
        page.wait_for_url("**stalled_days=3**")
        assert page.locator("#stalled [data-empty]").count() == 1
        assert not errors, errors
        context.close()

    def test_journey_map_counts_and_segment_sizes(self, browser: Any, shop: LiveGateway) -> None:
        context, page, _ = open_page(browser, shop)
        page.goto(shop.url + "/app/journey", wait_until="domcontentloaded")
        entered = [page.locator(f'[data-stage="{s}"] [data-field="entered"]').inner_text() for s in EXPECTED]
        assert entered == ["4", "3", "2", "2", "1"]
        assert page.locator('[data-stage="interest"] [data-field="converted_from_previous_rate"]').inner_text() == "75.0%"
        page.goto(shop.url + "/app/segments", wait_until="domcontentloaded")
        # hand-worked lifecycle segments: alice 2 orders (active), bob 1 (new), carol and dave none
        sizes = {k: page.locator(f'[data-segment="lifecycle:{k}"] [data-field="member_count"]').inner_text()
                 for k in ("potential", "new", "active", "loyal")}
        assert sizes == {"potential": "2", "new": "1", "active": "1", "loyal": "0"}
        page.goto(shop.url + "/app/customers/alice", wait_until="domcontentloaded")
        assert page.locator('[data-field="revenue"]').inner_text() == "1,250.50"  # thousands separators
        assert page.locator('[data-segment="lifecycle:active"]').inner_text().count("because")
        context.close()

    def test_satisfaction_panel_nps_segments_and_a_customers_answers(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/segments", wait_until="domcontentloaded")
        panel = page.locator('[data-section="satisfaction"]')
        window = {"from": panel.get_attribute("data-feedback-from"), "to": panel.get_attribute("data-feedback-to")}
        for survey, fields in FEEDBACK.items():
            answer = shop.api("GET", f"/api/feedback/{survey}", params=window).json()
            tile = panel.locator(f'[data-feedback="{survey}"]')
            for name, expected in fields.items():
                shown = tile.locator(f'[data-field="{name}"]')
                assert shown.inner_text() == expected, (survey, name)
                if name == "satisfied_share":
                    assert expected == f"{answer[name] * 100:.1f}%"
                elif name in ("nps", "average"):
                    assert float(shown.get_attribute("data-value")) == pytest.approx(answer[name])
                else:
                    assert expected == f"{answer[name]:,}"
        # the nps:* segments are listed like the others, sized from the latest answers
        sizes = {k: page.locator(f'[data-segment="nps:{k}"] [data-field="member_count"]').inner_text()
                 for k in ("promoter", "passive", "detractor")}
        assert sizes == {"promoter": "2", "passive": "0", "detractor": "1"}
        page.goto(shop.url + "/app/customers/carol", wait_until="domcontentloaded")
        nps = page.locator('[data-section="profile"] [data-field="nps"]')
        assert nps.get_attribute("data-value") == "9" and "promoter" in nps.inner_text()
        assert "no answer yet" in page.locator('[data-section="profile"] [data-field="csat"]').inner_text()
        assert page.locator('[data-section="segments"] [data-segment="nps:promoter"]').count() == 1
        page.goto(shop.url + "/app/customers/bob", wait_until="domcontentloaded")
        assert page.locator('[data-section="profile"] [data-field="csat"]').get_attribute("data-value") == "2"
        assert "detractor" in page.locator('[data-section="profile"] [data-field="nps"]').inner_text()
        assert not errors, errors
        context.close()

    def test_recommendations_on_the_customer_page(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        for customer, wanted in (("alice", "p3"), ("bob", "p2")):
            page.goto(shop.url + f"/app/customers/{customer}", wait_until="domcontentloaded")
            section = page.locator('[data-section="recommendations"]')
            shown = section.locator("[data-product-id]").evaluate_all("rows => rows.map(r => r.dataset.productId)")
            answer = shop.api("GET", f"/api/recommendations/customers/{customer}", params={"limit": 10}).json()
            assert shown == [item["product_id"] for item in answer["items"]] == [wanted], customer
            assert "because of p1" in section.locator(f'[data-product-id="{wanted}"]').inner_text()
        assert not errors, errors
        context.close()

    def test_journey_map_channels_and_touchpoints(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/journey", wait_until="domcontentloaded")
        window = {"from": page.locator("[data-report-from]").get_attribute("data-report-from"),
                  "to": page.locator("[data-report-from]").get_attribute("data-report-to")}
        entered = {"awareness": 4, "interest": 3, "consideration": 2, "purchase": 2, "loyalty": 1}
        for stage, conversions in entered.items():
            hook = page.locator(f'[data-stage="{stage}"]')
            credit = shop.api("GET", "/api/funnels/lifecycle/attribution",
                              params={**window, "stage": stage, "model": "linear"}).json()
            shown = hook.locator('[data-section="attribution"] [data-channel]')
            assert shown.evaluate_all("rows => rows.map(r => r.dataset.channel)") == \
                [c["channel"] or "" for c in credit["channels"][:3]], stage
            credits = [float(v) for v in hook.locator('[data-section="attribution"] [data-field="credit"]').evaluate_all(
                "cells => cells.map(c => c.dataset.value)")]
            assert credits == pytest.approx([c["credit"] for c in credit["channels"][:3]])
            if len(credit["channels"]) <= 3:  # every channel shown: the credits add up to the stage's entries
                assert sum(credits) == pytest.approx(conversions), stage
            if stage != "awareness":
                touch = shop.api("GET", "/api/funnels/lifecycle/touchpoints", params={**window, "stage": stage}).json()
                names = hook.locator('[data-section="touchpoints"] [data-touchpoint]').evaluate_all(
                    "rows => rows.map(r => r.dataset.touchpoint)")
                assert names == [t["name"] for t in touch["touchpoints"][:3]], stage
                if not names:  # four customers: no event reaches the five customers a touchpoint needs
                    assert "5 or more customers" in hook.locator('[data-section="touchpoints"]').inner_text()
            else:
                assert hook.locator('[data-section="touchpoints"]').count() == 0
        assert not errors, errors
        context.close()

    def test_api_errors_are_shown_in_words(self, browser: Any, shop: LiveGateway) -> None:
        context, page, _ = open_page(browser, shop)
        page.goto(shop.url + "/app/funnels/no-such-funnel", wait_until="domcontentloaded")
        assert "No funnel 'no-such-funnel'" in page.locator("[data-error]").first.inner_text()
        page.goto(shop.url + "/app/funnels/lifecycle?from=2026-13-45", wait_until="domcontentloaded")
        assert re.search(r"HTTP 422", page.locator("[data-error]").first.inner_text())
        page.goto(shop.url + "/app/customers/nobody-here", wait_until="domcontentloaded")
        assert "No customer nobody-here" in page.locator("[data-empty]").first.inner_text()
        context.close()


class TestFollowups:
    def test_complete_and_snooze_in_the_page_change_the_api(self, browser: Any, shop: LiveGateway) -> None:
        welcome = welcome_of(shop, "bob")
        others = [f for f in shop.api("GET", "/api/followups", params={"customer_id": "alice"}).json()["items"]
                  if f["status"] not in ("done", "cancelled")]
        assert welcome and others
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/followups", wait_until="domcontentloaded")
        row = page.locator(f'[data-followup-id="{welcome["id"]}"]')
        row.locator("[data-outcome]").select_option("converted")
        row.locator('[data-action="complete"]').click()
        page.wait_for_function("document.getElementById('notice').textContent.includes('completed')")
        done = shop.api("GET", f"/api/followups/{welcome['id']}").json()
        assert (done["status"], done["outcome"]) == ("done", "converted")
        assert row.locator('[data-action]').count() == 0  # nothing left to do on it

        target = others[0]
        row = page.locator(f'[data-followup-id="{target["id"]}"]')
        row.locator("[data-snooze-days]").select_option("3")
        clicked = datetime.now(UTC)
        row.locator('[data-action="snooze"]').click()
        page.wait_for_function("document.getElementById('notice').textContent.includes('snoozed')")
        snoozed = shop.api("GET", f"/api/followups/{target['id']}").json()
        due = datetime.fromisoformat(snoozed["due_at"])
        assert snoozed["status"] == "pending"
        assert abs((due - clicked).total_seconds() - 3 * 86400) < 120
        assert not errors, errors
        context.close()

    def test_a_refused_action_is_shown_in_words(self, browser: Any, shop: LiveGateway) -> None:
        target = next(f for f in shop.api("GET", "/api/followups").json()["items"] if f["status"] not in ("done", "cancelled"))
        context, page, _ = open_page(browser, shop)
        page.goto(shop.url + "/app/followups", wait_until="domcontentloaded")
        shop.api("POST", f"/api/followups/{target['id']}/cancel", json={"reason": "closed elsewhere"})
        page.locator(f'[data-followup-id="{target["id"]}"] [data-action="complete"]').click()
        page.wait_for_function("document.getElementById('notice').className === 'bad'")
        assert "Could not complete" in page.locator("#notice").inner_text()
        context.close()

    def test_a_reader_sees_no_write_buttons(self, browser: Any, shop: LiveGateway) -> None:
        context, page, errors = open_page(browser, shop)
        page.goto(shop.url + "/app/signin", wait_until="domcontentloaded")
        page.fill("input[name=api_key]", "not-a-key")
        page.click("button[type=submit] >> text=Sign in")
        assert "not known" in page.locator("[data-error]").inner_text()
        page.fill("input[name=api_key]", "dev-reader-key")
        page.click("button[type=submit] >> text=Sign in")
        page.wait_for_url("**/app/")
        assert page.locator("[data-role]").get_attribute("data-role") == "reader"
        for path in ("/app/followups", "/app/customers/bob"):
            page.goto(shop.url + path, wait_until="domcontentloaded")
            assert page.locator("[data-followup-id]").count() > 0, path
            assert page.locator("[data-action], button[data-action]").count() == 0, path
        page.screenshot(path=str(shop.shots / "followups-reader-1280.png"), full_page=True)
        assert not errors, errors
        context.close()
