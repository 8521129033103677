"""The dashboard's pages (docs/api.md section 8), rendered on the server from the public API.

Every number on a page comes from the gateway's own `/api` routes, called in-process (the gateway
app called as an ASGI app, see `asgi_get`) with the browser's key as the Bearer key: the same
routing, rate limits and auth checks as any client's call, so there is one auth path and a reader's key can
do no more here than with curl. The key is kept in a session cookie (set by the sign-in form, or
on a loopback server running with the dev keys, the dev admin key); the page's small script reads
it to send the follow-up actions to the API itself, as the Bearer key again.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import jinja2
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.gateway.routes import service_for
from shared.auth import DEV_ADMIN_KEY, Credentials, Role, is_loopback
from shared.params import EARLIEST

HERE = Path(__file__).parent
COOKIE = "funnelstream_key"
JOURNEY_FUNNEL = "lifecycle"
ATTRIBUTION_MODEL = "linear"  # the journey map's credit per channel: every touchpoint counts alike
JOURNEY_TOP = 3  # channels and touchpoints shown per stage
DEFAULT_DAYS = 90  # the date range a funnel page shows when none is asked for
SDK_HINT = "run make demo, or point a Segment SDK at this server with your write key"


# ---- numbers for people -------------------------------------------------------------------------

def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def percent(rate: float | None) -> str:
    if rate is None:
        return "–"
    return f"{rate * 100:.1f}%"


def duration(seconds: float | None) -> str:
    """Days and hours for people: '2 d 4 h', '3 h 20 min', '5 min', '40 s'."""
    if seconds is None:
        return "–"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours, mins = divmod(round(minutes), 60)
    if hours < 24:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def when(iso: str | None) -> str:
    if not iso:
        return "–"
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def signed(value: float | None) -> str:
    """A score that may be negative (NPS runs from -100 to +100): '+33.3', '-5.0', '0.0'."""
    if value is None:
        return "–"
    return f"{value:+.1f}" if value else "0.0"


def money(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else str(value)
    return f"{value:,.2f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(number=number, percent=percent, signed=signed, duration=duration, when=when, money=money,
                       pretty=lambda v: json.dumps(v, indent=2, ensure_ascii=False))
    env.globals["quote"] = lambda s: quote(str(s), safe="")
    return env


# ---- calling the API as the browser ------------------------------------------------------------

@dataclass
class ApiAnswer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The API's error in words (its message, or the status when there is none)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return f"{error['message']} (HTTP {self.status}, {error.get('code', 'error')})"
        return f"The API answered HTTP {self.status}."


class SignInNeeded(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


class Api:
    """GETs through the gateway's own routes with the browser's key.

    The gateway app is called as an ASGI app directly (as httpx's ASGI transport does, with the
    same scope: client 127.0.0.1, every middleware, route, rate limit and auth check), without an
    HTTP client in between: httpx's URL, header and cookie handling was a sixth of an internal
    call's time (py-spy, the journey page's 11 calls)."""

    def __init__(self, app: Callable[..., Any], key: str) -> None:
        self.app = app
        self.headers = [(b"host", b"gateway"), (b"authorization", f"Bearer {key}".encode("latin-1", "replace"))]  # else unknown: 401

    async def get(self, path: str, **params: Any) -> ApiAnswer:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        status, content = await asgi_get(self.app, path, query, self.headers)
        try:
            body = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            body = None
        answer = ApiAnswer(status, body)
        if answer.status == 401:
            raise SignInNeeded(answer.message)
        return answer

    async def many(self, *calls: Any) -> list[ApiAnswer]:
        return list(await asyncio.gather(*calls))

    async def all_items(self, path: str, pages: int = 5, **params: Any) -> ApiAnswer:
        """Every item of a paged list (up to `pages` pages of 1,000)."""
        items: list[Any] = []
        cursor = None
        for _ in range(pages):
            answer = await self.get(path, limit=1000, cursor=cursor, **params)
            if not answer.ok:
                return answer
            items.extend(answer.body["items"])
            cursor = answer.body.get("next_cursor")
            if not cursor:
                break
        return ApiAnswer(200, {"items": items, "next_cursor": cursor})


async def asgi_get(app: Callable[..., Any], path: str, query: str,
                   headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """(status, body) of a GET of `path` (%-escaped as in a URL) with `query` (urlencoded)
    answered by the ASGI `app` in this process. An exception the app raises goes to the caller."""
    done = asyncio.Event()
    sent = False
    status, chunks = 500, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(path), "raw_path": path.encode("ascii"), "root_path": "",
             "query_string": query.encode("ascii"), "headers": headers,
             "client": ("127.0.0.1", 123), "server": ("gateway", 80), "extensions": {}}
    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status, b"".join(chunks)


def key_of(request: Request) -> str | None:
    """The browser's key: its cookie, else the dev admin key on a loopback dev server."""
    key = request.cookies.get(COOKIE)
    if key:
        return key
    credentials: Credentials = request.app.state.credentials
    client = request.client.host if request.client else ""
    if credentials.dev and is_loopback(client):
        return DEV_ADMIN_KEY
    return None


# ---- dates of a report -------------------------------------------------------------------------

def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def date_range(from_text: str | None, to_text: str | None, today: date) -> tuple[str, str, str, str]:
    """(from shown, to shown, from sent, to sent): days in the form, the whole `to` day included.
    Text that is not a day goes to the API as written, so its answer names what is wrong."""
    to_day = _day(to_text) if to_text else today
    from_day = _day(from_text) if from_text else (to_day or today) - timedelta(days=DEFAULT_DAYS)
    to_sent = f"{to_day + timedelta(days=1)}T00:00:00Z" if to_day else str(to_text)
    from_sent = f"{from_day}T00:00:00Z" if from_day else str(from_text)
    return (str(from_day) if from_day else str(from_text), str(to_day) if to_day else str(to_text),
            from_sent, to_sent)


def stage_rows(funnel: dict[str, Any] | None, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's stages with their names and bar widths (share of the first stage)."""
    names = {s["key"]: s.get("name") or s["key"] for s in (funnel or {}).get("stages", [])}
    stages = report.get("stages", [])
    top = max((s["entered"] for s in stages), default=0)
    return [{**s, "name": names.get(s["stage"], s["stage"]),
             "width": 0 if not top else round(100 * s["entered"] / top, 1)} for s in stages]


def trend_interval(from_text: str, to_text: str) -> str:
    """Days for a month or less, weeks up to half a year, else months."""
    start, end = _day(from_text), _day(to_text)
    days = (end - start).days if start and end else DEFAULT_DAYS
    return "day" if days <= 31 else "week" if days <= 183 else "month"


def trend_bars(trends: dict[str, Any]) -> list[dict[str, Any]]:
    """Per period of a trends answer: customers starting (first stage), reaching the last stage,
    the overall rate, and bar heights as shares of the busiest period."""
    periods = trends.get("periods") or []
    rows = []
    for period in periods:
        stages = period.get("stages") or [{"entered": 0}]
        rows.append({"start": period["start"][:10], "started": stages[0]["entered"], "finished": stages[-1]["entered"],
                     "rate": period.get("overall_conversion_rate")})
    top = max((r["started"] for r in rows), default=0)
    for r in rows:
        r["height"] = 0 if not top else round(100 * r["started"] / top, 1)
        r["finished_height"] = 0 if not top else round(100 * r["finished"] / top, 1)
    return rows


def spark(points: list[dict[str, Any]]) -> dict[str, Any]:
    """An SVG polyline of segment sizes over time (viewBox 0 0 300 60)."""
    sizes = [p["size"] for p in points]
    if not sizes:
        return {"path": "", "max": 0, "min": 0, "first": None, "last": None}
    top = max(max(sizes), 1)
    step = 300 / max(len(sizes) - 1, 1)
    path = " ".join(f"{i * step:.1f},{58 - 56 * s / top:.1f}" for i, s in enumerate(sizes))
    return {"path": path, "max": max(sizes), "min": min(sizes), "first": points[0]["at"], "last": points[-1]["at"]}


# ---- the routes ----------------------------------------------------------------------------------

def install(app: FastAPI) -> None:
    """Adds `/`, `/app/...` and `/app/static/...` to the gateway (before its catch-all proxy)."""
    env = _environment()
    app.mount("/app/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

    def render(request: Request, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        key = key_of(request)
        role = request.app.state.credentials.role_of(key) if key else None
        html = env.get_template(template).render(
            request=request, role=role.value if role else None, admin=role is Role.admin,
            signed_in_by_cookie=bool(request.cookies.get(COOKIE)), sdk_hint=SDK_HINT,
            host=str(request.base_url).rstrip("/"), **context)
        response = HTMLResponse(html, status_code=http_status)
        response.headers["Cache-Control"] = "no-store"
        if key and not request.cookies.get(COOKIE):  # the dev admin key: the script sends it too
            response.set_cookie(COOKIE, key, samesite="strict", path="/")
        return response

    def page(template: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A page: its function returns the template's context from the API's answers."""
        def wrap(build: Callable[..., Any]) -> Callable[..., Any]:
            async def handler(request: Request) -> Response:
                key = key_of(request)
                if key is None:
                    return _to_signin(request, "Sign in with an API key to see the dashboard.")
                try:
                    context = await build(request, Api(app, key))
                except SignInNeeded as exc:
                    return _to_signin(request, exc.message)
                return render(request, template, **context)
            handler.__name__ = build.__name__
            return handler
        return wrap

    def _to_signin(request: Request, message: str) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/app/signin?{urlencode({'next': target, 'message': message})}", status_code=303)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)

    @app.get("/app", include_in_schema=False)
    async def app_root() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)

    @app.get("/app/signin", include_in_schema=False)
    async def signin_form(request: Request) -> HTMLResponse:
        return render(request, "signin.html", message=request.query_params.get("message", ""),
                      next=_safe_next(request.query_params.get("next")))

    @app.post("/app/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("api_key") or [""])[0].strip()
        target = _safe_next((form.get("next") or [""])[0])
        if not key or request.app.state.credentials.role_of(key) is None:
            message = "That API key is not known here." if key else "Enter an API key."
            return render(request, "signin.html", message=message, next=target)  # 200: a console stays quiet
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, key, samesite="strict", path="/")  # a session cookie
        return response

    @app.post("/app/signout", include_in_schema=False)
    async def signout() -> Response:
        response = RedirectResponse("/app/signin?message=Signed+out.", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/app/", include_in_schema=False)
    @page("overview.html")
    async def overview(request: Request, api: Api) -> dict[str, Any]:
        # The overdue count from the stats over every due time (its `overdue`: status overdue now,
        # as the list's filter), not a list of up to 1,000 follow-ups read and sent only to be counted.
        funnels, segments, stats = await api.many(
            api.get("/api/funnels", limit=100), api.get("/api/segments", limit=1000),
            api.get("/api/followups/stats", **{"from": EARLIEST.isoformat()}))
        overdue = sum(row["overdue"] for row in stats.body["items"]) if stats.ok else 0
        return {"funnels": funnels, "segments": segments, "stats": stats, "overdue": overdue}

    @app.get("/app/journey", include_in_schema=False)
    @page("journey.html")
    async def journey(request: Request, api: Api) -> dict[str, Any]:
        shown_from, shown_to, sent_from, sent_to = date_range(
            request.query_params.get("from"), request.query_params.get("to"), datetime.now(UTC).date())
        window = {"from": sent_from, "to": sent_to}
        funnel, report = await api.many(
            api.get(f"/api/funnels/{JOURNEY_FUNNEL}"),
            api.get(f"/api/funnels/{JOURNEY_FUNNEL}/report", **window))
        stages = stage_rows(funnel.body, report.body) if report.ok else []
        now_at = (funnel.body or {}).get("customers", {}) if funnel.ok else {}
        # Per stage: the channels credited with its entries (linear attribution) and, past the first
        # stage, the touchpoints that go with moving into it (docs/api.md section 9).
        keys = [s["stage"] for s in stages if s["entered"]]
        answers = await api.many(
            *(api.get(f"/api/funnels/{JOURNEY_FUNNEL}/attribution", stage=k, model=ATTRIBUTION_MODEL, **window) for k in keys),
            *(api.get(f"/api/funnels/{JOURNEY_FUNNEL}/touchpoints", stage=k, **window) for k in keys[1:]))
        attribution = dict(zip(keys, answers[:len(keys)], strict=True))
        touchpoints = dict(zip(keys[1:], answers[len(keys):], strict=True))
        return {"funnel": funnel, "report": report, "stages": stages, "now_at": now_at,
                "attribution": attribution, "touchpoints": touchpoints, "model": ATTRIBUTION_MODEL,
                "top": JOURNEY_TOP, "from_": shown_from, "to": shown_to, "sent_from": sent_from, "sent_to": sent_to}

    @app.get("/app/funnels", include_in_schema=False)
    @page("funnels.html")
    async def funnels(request: Request, api: Api) -> dict[str, Any]:
        return {"funnels": await api.all_items("/api/funnels")}

    @app.get("/app/funnels/{key}", include_in_schema=False)
    @page("funnel.html")
    async def funnel(request: Request, api: Api) -> dict[str, Any]:
        key = request.path_params["key"]
        q = request.query_params
        shown_from, shown_to, sent_from, sent_to = date_range(q.get("from"), q.get("to"), datetime.now(UTC).date())
        breakdown = q.get("breakdown") or None
        interval = trend_interval(shown_from, shown_to)
        stalled, stalled_days = q.get("stalled") or "", q.get("stalled_days") or "3"
        stalled_call = api.get(f"/api/funnels/{quote(key, safe='')}/stages/{quote(stalled, safe='')}/customers",
                               stalled_days=stalled_days, limit=20) if stalled else _nothing()
        definition, report, segments, trends, stuck = await api.many(
            api.get(f"/api/funnels/{quote(key, safe='')}"),
            api.get(f"/api/funnels/{quote(key, safe='')}/report", **{"from": sent_from, "to": sent_to, "breakdown": breakdown}),
            api.get("/api/segments", limit=1000),
            api.get(f"/api/funnels/{quote(key, safe='')}/trends", **{"from": sent_from, "to": sent_to, "interval": interval}),
            stalled_call)
        stages = stage_rows(definition.body, report.body) if report.ok else []
        breakdown_options = ["channel"] + [f"segment:{s['key']}" for s in (segments.body or {}).get("items", [])] \
            if segments.ok else ["channel"]
        return {"key": key, "definition": definition, "report": report, "stages": stages,
                "stalled": stalled, "stalled_days": stalled_days, "stuck": stuck,
                "trends": trends, "trend": trend_bars(trends.body) if trends.ok else [],
                "breakdown": breakdown or "", "breakdown_options": breakdown_options,
                "from_": shown_from, "to": shown_to, "sent_from": sent_from, "sent_to": sent_to}

    @app.get("/app/segments", include_in_schema=False)
    @page("segments.html")
    async def segments(request: Request, api: Api) -> dict[str, Any]:
        q = request.query_params
        shown_from, shown_to, sent_from, sent_to = date_range(q.get("from"), q.get("to"), datetime.now(UTC).date())
        window = {"from": sent_from, "to": sent_to}
        segments, nps, csat = await api.many(
            api.all_items("/api/segments"), api.get("/api/feedback/nps", **window), api.get("/api/feedback/csat", **window))
        return {"segments": segments, "nps": nps, "csat": csat, "from_": shown_from, "to": shown_to,
                "sent_from": sent_from, "sent_to": sent_to}

    @app.get("/app/segments/{key}", include_in_schema=False)
    @page("segment.html")
    async def segment(request: Request, api: Api) -> dict[str, Any]:
        key = request.path_params["key"]
        path = f"/api/segments/{quote(key, safe='')}"
        today = datetime.now(UTC).date()
        summary, members, size = await api.many(
            api.get(path),
            api.get(f"{path}/members", limit=50, cursor=request.query_params.get("cursor")),
            api.get(f"{path}/size", **{"from": f"{today - timedelta(days=30)}T00:00:00Z", "interval": "day"}))
        return {"key": key, "summary": summary, "members": members, "size": size,
                "spark": spark(size.body.get("points", [])) if size.ok else None}

    @app.get("/app/customers/", include_in_schema=False)
    async def find_customer(request: Request) -> RedirectResponse:
        """The header's customer box without its script: ?id= to the customer's page."""
        customer_id = (request.query_params.get("id") or "").strip()
        return RedirectResponse(f"/app/customers/{quote(customer_id, safe='')}" if customer_id else "/app/", status_code=303)

    @app.get("/app/customers/{customer_id}", include_in_schema=False)
    @page("customer.html")
    async def customer(request: Request, api: Api) -> dict[str, Any]:
        customer_id = request.path_params["customer_id"]
        cid = quote(customer_id, safe="")
        calls = [api.get(f"/api/customers/{cid}"), api.get(f"/api/customers/{cid}/timeline", limit=50),
                 api.get("/api/followups", customer_id=customer_id, limit=100), api.all_items("/api/funnels")]
        # Recommendations appear once a service answers their route (docs/api.md section 10).
        recommendations_path = f"/api/recommendations/customers/{cid}"
        if service_for("GET", recommendations_path) in request.app.state.upstreams:
            calls.append(api.get(recommendations_path, limit=10))
        profile, timeline, followups, funnels, *more = await api.many(*calls)
        positions = []
        if funnels.ok:
            keys = [f["key"] for f in funnels.body["items"]]
            answers = await api.many(*(api.get(f"/api/funnels/{quote(k, safe='')}/customers/{cid}") for k in keys))
            names = {f["key"]: f for f in funnels.body["items"]}
            positions = [(names[k], a) for k, a in zip(keys, answers, strict=True)]
        return {"customer_id": customer_id, "profile": profile, "timeline": timeline, "followups": followups,
                "funnels": funnels, "positions": positions, "recommendations": more[0] if more else None}

    @app.get("/app/followups", include_in_schema=False)
    @page("followups.html")
    async def followups(request: Request, api: Api) -> dict[str, Any]:
        q = request.query_params
        status, assignee = q.get("status") or "", q.get("assignee") or ""
        items, stats = await api.many(
            api.get("/api/followups", status=status, assignee=assignee, limit=100, cursor=q.get("cursor")),
            api.get("/api/followups/stats"))
        return {"items": items, "stats": stats, "status": status, "assignee": assignee,
                "statuses": ["", "overdue", "due", "pending", "done", "cancelled"]}


async def _nothing() -> None:
    return None


def _safe_next(target: str | None) -> str:
    """Only a dashboard page of this server (no open redirect)."""
    if target and target.startswith("/app/") and not target.startswith("//"):
        return target
    return "/app/"

