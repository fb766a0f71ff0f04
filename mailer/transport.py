"""SMTP connections from a URL, and one send that always ends in a reply.

`smtp://user:pass@host:port` upgrades with STARTTLS when the server offers
it; `smtps://` is TLS from the first byte. Every outcome of a send, success
or refusal, comes back as a `Reply` so callers record it instead of guessing;
only a lost connection raises, because then nothing is known about the rest
of the batch.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mailer.messages import envelope_address


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class ConnectionLost(RuntimeError):
    """The SMTP conversation broke; what was in flight is unknown."""


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def connect(url: str, timeout: float = 30.0) -> smtplib.SMTP:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        if parts.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(
                host, parts.port or 465, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = smtplib.SMTP(host, parts.port or 25, timeout=timeout)
            conn.ehlo()
            if conn.has_extn("starttls"):
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
        if parts.username:
            conn.login(unquote(parts.username), unquote(parts.password or ""))
    except (OSError, smtplib.SMTPException) as exc:
        raise ConnectionLost(f"cannot connect to SMTP server {host}: {exc}") from exc
    return conn


def send(conn: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> Reply:
    """Send one message to one recipient and return the server's verdict."""
    env_from = envelope_address(sender)
    env_to = envelope_address(recipient)
    options = ["SMTPUTF8"] if (env_from.smtputf8 or env_to.smtputf8) else []
    try:
        refused = conn.sendmail(env_from.address, [env_to.address], data, mail_options=options)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return Reply(code, _decode(text))
    except smtplib.SMTPSenderRefused as exc:
        return Reply(exc.smtp_code, _decode(exc.smtp_error))
    except smtplib.SMTPDataError as exc:
        return Reply(exc.smtp_code, _decode(exc.smtp_error))
    except smtplib.SMTPNotSupportedError as exc:
        return Reply(553, f"server does not support SMTPUTF8: {exc}")
    except smtplib.SMTPResponseException as exc:
        if exc.smtp_code == 421:
            raise ConnectionLost(f"421 {_decode(exc.smtp_error)}") from exc
        return Reply(exc.smtp_code, _decode(exc.smtp_error))
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        raise ConnectionLost(str(exc) or type(exc).__name__) from exc
    if refused:
        code, text = next(iter(refused.values()))
        return Reply(code, _decode(text))
    return Reply(250, "OK")


def close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
