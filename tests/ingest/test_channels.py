"""Where a customer came from: campaign parameters, then the referrer, then `context.channel`,
else direct. The rules alone, then once through the API."""
from __future__ import annotations

import pytest

from services.ingest.channels import classify
from tests.ingest.support import send_batch, track, wait_for_events

SHOP = "https://shop.example.com/product/42"


def page(url: str = SHOP, referrer: str | None = None) -> dict:
    return {"page": {"url": url, **({"referrer": referrer} if referrer else {})}}


class TestCampaignParameters:
    @pytest.mark.parametrize(("campaign", "channel"), [
        ({"source": "google", "medium": "cpc"}, "ads"),
        ({"source": "facebook", "medium": "paid_social"}, "ads"),
        ({"source": "newsletter", "medium": "email"}, "email"),
        ({"source": "mailchimp"}, "email"),
        ({"source": "facebook", "medium": "social"}, "social"),
        ({"source": "linkedin.com"}, "social"),
        ({"source": "bing", "medium": "organic"}, "search"),
        ({"source": "Google"}, "search"),
        ({"source": "partner-blog", "medium": "referral"}, "referral"),
        ({"source": "flyer", "medium": "print"}, "other"),
    ])
    def test_utm_in_context_campaign(self, campaign, channel):
        assert classify({"campaign": campaign}, {}) == channel

    @pytest.mark.parametrize(("query", "channel"), [
        ("utm_source=google&utm_medium=cpc", "ads"),
        ("utm_source=newsletter&utm_medium=e-mail&utm_campaign=june", "email"),
        ("ref=1&utm_medium=social&utm_source=twitter", "social"),
        ("utm_source=bing&utm_medium=organic#reviews", "search"),
        ("utm_source=Spring+Sale&utm_medium=banner", "ads"),
    ])
    def test_utm_in_the_page_url(self, query, channel):
        assert classify(page(f"{SHOP}?{query}"), {}) == channel
        assert classify({}, {"url": f"{SHOP}?{query}"}) == channel  # a page call's properties.url

    def test_campaign_parameters_win_over_the_referrer(self):
        context = {**page(f"{SHOP}?utm_source=newsletter&utm_medium=email", "https://www.google.com/"),
                   "channel": "social"}
        assert classify(context, {}) == "email"

    def test_context_campaign_wins_over_utm_in_the_url(self):
        context = {"campaign": {"source": "google", "medium": "cpc"}, **page(f"{SHOP}?utm_medium=email")}
        assert classify(context, {}) == "ads"


class TestReferrer:
    @pytest.mark.parametrize(("referrer", "channel"), [
        ("https://www.google.com/search?q=mugs", "search"),
        ("https://www.google.co.uk/", "search"),
        ("https://duckduckgo.com/", "search"),
        ("https://m.facebook.com/story", "social"),
        ("https://t.co/abc123", "social"),
        ("https://www.linkedin.com/feed/", "social"),
        ("https://mail.google.com/mail/u/0/", "email"),
        ("https://outlook.live.com/mail/", "email"),
        ("https://blog.example.org/best-mugs-2024", "referral"),
    ])
    def test_the_referrers_site_decides(self, referrer, channel):
        assert classify(page(referrer=referrer), {}) == channel
        assert classify({}, {"url": SHOP, "referrer": referrer}) == channel

    def test_a_referrer_on_the_same_site_is_internal_navigation(self):
        assert classify(page(referrer="https://shop.example.com/cart"), {}) == "direct"
        assert classify({**page(referrer="https://shop.example.com/"), "channel": "email"}, {}) == "email"


class TestNamedChannelAndDirect:
    @pytest.mark.parametrize(("named", "channel"), [
        ("email", "email"), ("social", "social"), ("Paid", "ads"), ("organic", "search"), ("referral", "referral"),
        ("browser", "direct"), ("server", "direct"), ("mobile", "direct"), ("none", "direct"),
    ])
    def test_context_channel_counts_when_it_names_a_traffic_source(self, named, channel):
        assert classify({"channel": named}, {}) == channel

    @pytest.mark.parametrize("context", [{}, page(), {"page": "not an object"}, {"campaign": None, "channel": 7}])
    def test_nothing_to_go_on_is_direct(self, context):
        assert classify(context, {}) == "direct"


class TestChannelOnTheTimeline:
    async def test_each_event_carries_its_channel(self, client):
        await send_batch(client, [
            track("ch-1", userId="u-ch", context={"campaign": {"source": "google", "medium": "cpc"}},
                  timestamp="2024-01-01T10:00:00Z"),
            {"type": "page", "messageId": "ch-2", "userId": "u-ch", "timestamp": "2024-01-01T10:01:00Z",
             "properties": {"url": f"{SHOP}?utm_source=newsletter&utm_medium=email"}},
            {"type": "page", "messageId": "ch-3", "userId": "u-ch", "timestamp": "2024-01-01T10:02:00Z",
             "context": page(referrer="https://www.bing.com/")},
            track("ch-4", userId="u-ch", context={"channel": "social"}, timestamp="2024-01-01T10:03:00Z"),
            track("ch-5", userId="u-ch", timestamp="2024-01-01T10:04:00Z"),
        ])
        items = await wait_for_events(client, "u-ch", "ch-1", "ch-2", "ch-3", "ch-4", "ch-5")
        assert [i["channel"] for i in reversed(items)] == ["ads", "email", "search", "social", "direct"]


class TestLookalikeHosts:
    @pytest.mark.parametrize("referrer", ["https://t.com/a", "https://x.company.com/", "https://mygoogle.com/",
                                          "https://googlex.com/search"])
    def test_a_host_that_only_resembles_a_known_site_is_a_referral(self, referrer: str):
        assert classify(page(referrer=referrer), {}) == "referral"

    @pytest.mark.parametrize(("referrer", "channel"), [
        ("https://news.google.co.uk/", "search"), ("https://m.facebook.com/story", "social"),
        ("https://www.x.com/post/1", "social"), ("https://mail.google.com/mail/u/0", "email"),
    ])
    def test_known_sites_match_on_any_subdomain_and_country(self, referrer: str, channel: str):
        assert classify(page(referrer=referrer), {}) == channel

    def test_a_www_link_within_the_same_site_is_internal(self):
        assert classify(page(url="https://shop.example.com/p", referrer="https://www.shop.example.com/"), {}) == "direct"

    @pytest.mark.parametrize(("app", "channel"), [
        ("com.google.android.gm", "email"), ("com.google.android.googlequicksearchbox", "search"),
        ("com.facebook.katana", "social"), ("com.example.someapp", "referral"),
    ])
    def test_mobile_app_referrers_are_classified_by_app(self, app: str, channel: str):
        assert classify(page(referrer=f"android-app://{app}"), {}) == channel
