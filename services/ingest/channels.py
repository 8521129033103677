"""Traffic-source classification: where did this customer come from?

Looked at in this order, first answer wins (as Segment/GA-style attribution does):
1. campaign parameters: `context.campaign.source/medium`, else `utm_source`/`utm_medium` in the
   page URL (`context.page.url` or `properties.url`);
2. the referrer (`context.page.referrer` or `properties.referrer`), by its host;
3. `context.channel` when it names a traffic source (Segment also uses it for the library kind,
   `browser`/`server`/`mobile`, which says nothing about the source and is ignored).
Nothing at all is `direct`; campaign parameters that fit no rule are `other`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

CHANNELS = ("direct", "search", "social", "email", "ads", "referral", "other")

ADS_MEDIUMS = {"cpc", "ppc", "paid", "paidsearch", "paid_search", "paid-search", "display", "cpm", "cpv",
               "banner", "ads", "ad", "paid_social", "paid-social", "paidsocial", "retargeting", "affiliate"}
EMAIL_MEDIUMS = {"email", "e-mail", "e_mail", "newsletter", "mail"}
SOCIAL_MEDIUMS = {"social", "social-network", "social-media", "sm", "social_media", "organic_social"}
SEARCH_MEDIUMS = {"organic", "search", "seo", "organic_search"}
REFERRAL_MEDIUMS = {"referral", "referrer", "link", "partner"}

SEARCH_HOSTS = ("google.", "bing.", "duckduckgo.", "yahoo.", "baidu.", "yandex.", "ecosia.", "search.brave.", "startpage.")
SOCIAL_HOSTS = ("facebook.", "fb.", "instagram.", "twitter.", "t.co", "x.com", "linkedin.", "lnkd.in", "tiktok.",
                "pinterest.", "youtube.", "reddit.", "snapchat.", "threads.net", "mastodon.", "whatsapp.")
EMAIL_HOSTS = ("mail.google.", "outlook.", "mail.yahoo.", "mail.proton.", "webmail.", "mailchi.mp")
EMAIL_SOURCES = {"newsletter", "mailchimp", "sendgrid", "klaviyo", "hubspot_email", "braze", "customerio"}

SYNONYMS = {"paid": "ads", "cpc": "ads", "ad": "ads", "organic": "search", "seo": "search", "e-mail": "email",
            "mail": "email", "newsletter": "email", "referrer": "referral", "none": "direct"}


def classify(context: dict[str, Any], properties: dict[str, Any]) -> str:
    page = _dict(context.get("page"))
    source, medium = _campaign(context, page, properties)
    if source or medium:
        return _from_campaign(source, medium)
    referrer = _str(page.get("referrer")) or _str(properties.get("referrer"))
    if referrer and (by_host := _from_referrer(_host(referrer), _host(_str(page.get("url")) or _str(properties.get("url"))))):
        return by_host
    named = _str(context.get("channel")).lower()
    return SYNONYMS.get(named, named) if SYNONYMS.get(named, named) in CHANNELS else "direct"


def _campaign(context: dict[str, Any], page: dict[str, Any], properties: dict[str, Any]) -> tuple[str, str]:
    campaign = _dict(context.get("campaign"))
    source, medium = _str(campaign.get("source")), _str(campaign.get("medium"))
    if not (source or medium):
        source, medium = _utm(_str(page.get("url")) or _str(properties.get("url")))
    return source.strip().lower(), medium.strip().lower()


def _utm(url: str) -> tuple[str, str]:
    """utm_source and utm_medium of a URL (a plain scan: this runs for every event)."""
    if "utm_" not in url:
        return "", ""
    found = {"utm_source": "", "utm_medium": ""}
    for pair in url.partition("?")[2].partition("#")[0].split("&"):
        name, _, value = pair.partition("=")
        if name in found:
            found[name] = unquote_plus(value)
    return found["utm_source"], found["utm_medium"]


def _host(url: str) -> str:
    after_scheme = url.partition("//")[2] if "//" in url else url
    return after_scheme.partition("/")[0].partition("?")[0].rpartition("@")[2].partition(":")[0].lower()


@lru_cache(maxsize=4096)
def _from_campaign(source: str, medium: str) -> str:
    if medium in ADS_MEDIUMS:
        return "ads"
    if medium in EMAIL_MEDIUMS or source in EMAIL_SOURCES:
        return "email"
    if medium in SOCIAL_MEDIUMS or (not medium and _host_is(source + ".", SOCIAL_HOSTS)):
        return "social"
    if medium in SEARCH_MEDIUMS or (not medium and _host_is(source + ".", SEARCH_HOSTS)):
        return "search"
    if medium in REFERRAL_MEDIUMS:
        return "referral"
    return "other"


@lru_cache(maxsize=4096)
def _from_referrer(host: str, own_host: str) -> str | None:
    if not host or host == own_host:
        return None  # internal navigation says nothing about the source
    if _host_is(host, EMAIL_HOSTS):
        return "email"
    if _host_is(host, SEARCH_HOSTS):
        return "search"
    if _host_is(host, SOCIAL_HOSTS):
        return "social"
    return "referral"


def _host_is(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower().removeprefix("www.").removeprefix("m.")
    return any(host.startswith(p) or f".{p}" in host or host == p for p in patterns)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
