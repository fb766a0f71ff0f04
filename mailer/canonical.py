"""What a link is: the canonical form an article is stored under, and its story key.

Pure functions of a URL, importing nothing of the project. They belong to
articles (`content/`), but `models.Article` keys its `story` column with
`dedupe_key` whenever a row's link is set, and models is the ground every
package stands on: so they sit on the ground beside it, not in `content/`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that only track clicks; they never change what a page is.
TRACKING_PARAMS = re.compile(r"^(utm_[a-z]+|fbclid|gclid|mc_cid|mc_eid|ref|ocid|cmpid)$", re.I)


def canonical_url(url: str) -> str:
    """The link as stored: lower-case scheme and host, no credentials, fragment or tracking."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        netloc = f"{netloc}:{port}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not TRACKING_PARAMS.match(k)
    ]
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(query), ""))


def dedupe_key(url: str) -> str:
    """What makes two links the same story: canonical URL without scheme, www. or end slash.

    http/https and www/no-www variants of one page are one article, as are
    links that differ only in tracking parameters or fragment.
    """
    parts = urlsplit(canonical_url(url))
    host = parts.netloc.removeprefix("www.")
    path = parts.path.rstrip("/") or "/"
    return f"{host}{path}" + (f"?{parts.query}" if parts.query else "")
