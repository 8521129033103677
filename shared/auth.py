"""API keys with roles for `/api/`, write keys for ingest, and the dev keys for loopback.

Every service checks credentials itself (so a service run alone is never open), and the gateway
checks them too so a bad key is refused before any hop.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request

from shared.errors import ApiError
from shared.settings import CommonSettings


class Role(str, Enum):
    admin = "admin"
    reader = "reader"


DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_KEY = "dev-admin-key"
DEV_READER_KEY = "dev-reader-key"


class InsecureConfig(RuntimeError):
    """Refusing to serve on a non-loopback address without configured keys."""


@dataclass(frozen=True)
class Credentials:
    api_keys: dict[str, Role]
    write_keys: frozenset[str]
    dev: bool

    def role_of(self, api_key: str) -> Role | None:
        return self.api_keys.get(api_key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_api_keys(text: str) -> dict[str, Role]:
    keys: dict[str, Role] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, role = item.rpartition(":")
        if not sep or not key or role not in Role.__members__:
            raise ValueError(f"API_KEYS entry {item!r} must look like 'key:admin' or 'key:reader'")
        keys[key] = Role(role)
    return keys


def resolve_credentials(settings: CommonSettings) -> Credentials:
    """Configured keys; else the dev keys on loopback; else refuse to start."""
    api_keys = parse_api_keys(settings.api_keys)
    write_keys = frozenset(k.strip() for k in settings.write_keys.split(",") if k.strip())
    if api_keys and write_keys:
        return Credentials(api_keys, write_keys, dev=False)
    if not is_loopback(settings.host):
        missing = " and ".join(n for n, v in (("API_KEYS", api_keys), ("WRITE_KEYS", write_keys)) if not v)
        raise InsecureConfig(
            f"HOST={settings.host} is not a loopback address and {missing} is not set: refusing to "
            "start with the public dev keys. Set API_KEYS='key:admin,key2:reader' and "
            "WRITE_KEYS='key', or bind to 127.0.0.1."
        )
    return Credentials(
        api_keys or {DEV_ADMIN_KEY: Role.admin, DEV_READER_KEY: Role.reader},
        write_keys or frozenset({DEV_WRITE_KEY}),
        dev=True,
    )


def bearer_role(request: Request, credentials: Credentials) -> Role:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer <api key>'.",
            "missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    role = credentials.role_of(token.strip())
    if role is None:
        raise ApiError(401, "Unknown API key.", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return role


def _credentials(request: Request) -> Credentials:
    creds: Credentials = request.app.state.credentials
    return creds


# The dependencies are `async def` though they never wait: FastAPI runs a plain `def` dependency
# in its thread pool, a hand-off to a worker thread and back on every API call (on the busy 2-core
# machine, a wait for a core each way).
async def require_reader(request: Request) -> Role:
    return bearer_role(request, _credentials(request))


async def require_admin(request: Request) -> Role:
    role = bearer_role(request, _credentials(request))
    if role is not Role.admin:
        raise ApiError(403, "This action needs an API key with the 'admin' role.", "admin_required")
    return role


ReaderDep = Annotated[Role, Depends(require_reader)]
AdminDep = Annotated[Role, Depends(require_admin)]
