"""Log hygiene: secrets never reach a log line; addresses only when the operator allows.

A filter on every handler rewrites the finished message, so a secret that
slips into an exception text or a URL is masked as well as one passed as an
argument. Addresses stay readable by default (operators need them to answer
"did my mail go out?") and are masked with MAILER_REDACT_ADDRESSES=true.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from mailer.config import Settings

ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
MASK = "***"


def redact(email: str) -> str:
    """The first letter and the domain: enough to tell readers apart in a log, not to mail one."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def secrets_of(settings: Settings) -> list[str]:
    found = []
    for value in (settings.secret_key, settings.api_token):
        if value is not None and value.get_secret_value():
            found.append(value.get_secret_value())
    for url in (settings.database_url, settings.broker_url, settings.smtp_url):
        password = urlsplit(url).password if url else None
        if password:
            found.append(password)
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: list[str], redact_addresses: bool) -> None:
        super().__init__()
        self.secrets = secrets
        self.redact_addresses = redact_addresses

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        if self.redact_addresses:
            text = ADDRESS.sub(lambda m: redact(m.group(0)), text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = self.scrub(message)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def install(settings: Settings, logger: logging.Logger | None = None) -> RedactingFilter:
    """Put the filter on every handler of `logger` (root by default), once."""
    logger = logger or logging.getLogger()
    filt = RedactingFilter(secrets_of(settings), settings.redact_addresses)
    if not logger.handlers:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(stream)
        logger.setLevel(settings.log_level.upper())
    for handler in logger.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(filt)
    return filt
