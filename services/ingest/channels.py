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

# Sites by name, whatever their country domain (google.com, google.co.uk), or by exact domain.
SEARCH_SITES = ("google", "bing", "duckduckgo", "yahoo", "baidu", "yandex", "ecosia", "startpage", "search.brave")
SOCIAL_SITES = ("facebook", "instagram", "twitter", "linkedin", "tiktok", "pinterest", "youtube", "reddit",
                "snapchat", "threads", "mastodon", "whatsapp", "t.co", "x.com", "lnkd.in", "fb.me")
EMAIL_SITES = ("mail.google", "outlook", "mail.yahoo", "mail.proton", "webmail", "mailchi.mp")
# Mobile apps send `android-app://<package>` as the referrer.
APP_CHANNELS = {"com.google.android.gm": "email", "com.microsoft.office.outlook": "email",
                "com.google.android.googlequicksearchbox": "search", "com.facebook.katana": "social",
                "com.instagram.android": "social", "com.twitter.android": "social", "com.linkedin.android": "social"}
EMAIL_SOURCES = {"newsletter", "mailchimp", "sendgrid", "klaviyo", "hubspot_email", "braze", "customerio"}

SYNONYMS = {"paid": "ads", "cpc": "ads", "ad": "ads", "organic": "search", "seo": "search", "e-mail": "email",
            "mail": "email", "newsletter": "email", "referrer": "referral", "none": "direct"}


def classify(context: dict[str, Any], properties: dict[str, Any]) -> str:
    return classify_traffic(*traffic(context, properties))


Traffic = tuple[str, str, str, str, str]


def traffic(context: dict[str, Any], properties: dict[str, Any]) -> Traffic:
    """All the channel depends on, as text ("" when absent or not text): the campaign's source
    and medium, the page's URL and referrer, and `context.channel`. A few strings the request
    path keeps, so the pipeline classifies without reading the message's objects again."""
    page, campaign, channel = context.get("page"), context.get("campaign"), context.get("channel")
    url = referrer = source = medium = ""
    if isinstance(page, dict):
        url, referrer = _str(page.get("url")), _str(page.get("referrer"))
    if isinstance(campaign, dict):
        source, medium = _str(campaign.get("source")), _str(campaign.get("medium"))
    return (source, medium, url or _str(properties.get("url")), referrer or _str(properties.get("referrer")),
            channel if isinstance(channel, str) else "")


@lru_cache(maxsize=8192)
def classify_traffic(source: str, medium: str, url: str, referrer: str, channel: str) -> str:
    """The channel of `traffic(...)` (a visitor's events repeat it: cached)."""
    if not (source or medium):
        source, medium = _utm(url)
    source, medium = source.strip().lower(), medium.strip().lower()
    if source or medium:
        return _from_campaign(source, medium)
    if referrer.startswith("android-app://"):
        return APP_CHANNELS.get(_host(referrer), "referral")
    if referrer and (by_host := _from_referrer(_host(referrer), _host(url))):
        return by_host
    named = channel.lower()
    return SYNONYMS.get(named, named) if SYNONYMS.get(named, named) in CHANNELS else "direct"


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
    """The host of a URL, lower case, without `www.` (a plain scan: this runs for every event)."""
    after_scheme = url.partition("//")[2] if "//" in url else url
    host = after_scheme.partition("/")[0].partition("?")[0].rpartition("@")[2].partition(":")[0].lower()
    return host.removeprefix("www.")


@lru_cache(maxsize=4096)
def _from_campaign(source: str, medium: str) -> str:
    if medium in ADS_MEDIUMS:
        return "ads"
    if medium in EMAIL_MEDIUMS or source in EMAIL_SOURCES:
        return "email"
    if medium in SOCIAL_MEDIUMS or (not medium and _is_site(source, SOCIAL_SITES)):
        return "social"
    if medium in SEARCH_MEDIUMS or (not medium and _is_site(source, SEARCH_SITES)):
        return "search"
    if medium in REFERRAL_MEDIUMS:
        return "referral"
    return "other"


@lru_cache(maxsize=4096)
def _from_referrer(host: str, own_host: str) -> str | None:
    if not host or host == own_host:
        return None  # internal navigation says nothing about the source
    if _is_site(host, EMAIL_SITES):
        return "email"
    if _is_site(host, SEARCH_SITES):
        return "search"
    if _is_site(host, SOCIAL_SITES):
        return "social"
    return "referral"


def _is_site(host: str, sites: tuple[str, ...]) -> bool:
    """Whether `host` is one of `sites`: an exact domain (`t.co`, and its subdomains), or a site
    name followed by any country domain (`google` matches google.com, news.google.co.uk)."""
    dotted = f".{host.removeprefix('m.')}."
    return any(f".{site}." in dotted for site in sites)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
