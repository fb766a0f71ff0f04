"""`X-Forwarded-For` and `-Proto` believed from MAILER_TRUSTED_PROXIES and from no one else.

uvicorn applies those headers itself by default, from 127.0.0.1 whatever we
configured (its `forwarded_allow_ips`), so anyone on the machine, or any
local process relaying requests, could pick the address that per-IP limits,
the admin login limit and the consent record see. Every way we start
uvicorn turns its own handling off (`proxy_headers=False`,
`--no-proxy-headers`: `UVICORN_OPTIONS`, `UVICORN_FLAGS`), and the app applies the headers
itself with uvicorn's own middleware given our list: empty means nobody's.
Run uvicorn by hand with `--no-proxy-headers` too (or use `mailer web`);
without it, uvicorn rewrites the caller's address before the app sees it.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


class TrustedProxies(ProxyHeadersMiddleware):
    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        # uvicorn's parser takes addresses and networks; "" trusts nobody.
        super().__init__(app, trusted_hosts=",".join(trusted))  # type: ignore[arg-type]


# What every uvicorn we start is given: no proxy handling of its own (in code, on a command line).
UVICORN_OPTIONS: dict[str, Any] = {"proxy_headers": False}
UVICORN_FLAGS = ["--no-proxy-headers"]
