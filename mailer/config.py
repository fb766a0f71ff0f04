"""Settings from the environment (MAILER_*), one object for the whole process.

The embedded default needs no servers: SQLite, a broker kept in a second
SQLite file and a built-in SMTP sink. Production mode refuses to start on
the defaults that are only safe on a laptop (a generated secret, no API token).
"""

from __future__ import annotations

import json
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
API_TOKEN_MIN_LENGTH = 24


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message says which and what to do."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILER_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    queue: str = "mailer"
    smtp_url: str = ""
    smtp_timeout: float = 30.0
    sink_host: str = "127.0.0.1"
    sink_port: int = 8025
    base_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    api_token: SecretStr | None = None
    check_deliverability: bool = False
    confirm_max_age: int = Field(7 * 86400, description="seconds a confirm link stays valid")
    pending_purge_after: int = Field(30 * 86400, description="seconds before unconfirmed go")
    confirm_resend_interval: int = 600
    cors_origins: Annotated[list[str], NoDecode] = []
    subscribe_rate_ip_per_minute: int = 20
    subscribe_rate_address_per_hour: int = 5
    # Admin login attempts from one client address an hour, right or wrong; 0 turns it off.
    admin_login_attempts_per_hour: int = 20
    max_body_bytes: int = 5 * 1024 * 1024
    trusted_proxies: Annotated[list[str], NoDecode] = []
    templates_dir: Path | None = None
    send_rate: float = 0.0
    send_batch_size: int = 200
    send_lease: int = 300
    send_max_attempts: int = 6
    send_retry_base: int = 60
    digest_max_articles: int = 10
    # A feed's first poll makes only items published this recently due (the rest is history).
    digest_max_age: int = Field(7 * 86400, ge=0, description="seconds")
    summary_length: int = 280
    feed_poll_interval: int = 900
    feed_timeout: float = 20.0
    feed_max_bytes: int = 5 * 1024 * 1024
    # Fetch feeds and pages from private, loopback and link-local addresses too.
    fetch_allow_private: bool = False
    # Topics text from outside (feed categories, API topics, page tags) may create.
    max_topics_per_feed: int = 50
    max_topics_per_newsletter: int = 200
    unsubscribe_mailto: str = ""
    dkim_selector: str = ""
    dkim_private_key_path: Path | None = None
    bounce_address: str = Field("", description="VERP base, e.g. bounces@example.org")
    bounce_maildir: Path | None = None
    bounce_imap_url: SecretStr | None = None
    soft_bounce_limit: int = 3
    redact_addresses: bool = False
    log_level: str = "INFO"

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dkim_private_key_path", "bounce_maildir", "templates_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        """`MAILER_X=` in an env file means "not set", not the current directory."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        name = value.strip().upper()
        if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return name

    @model_validator(mode="after")
    def _where_up_runs(self) -> Settings:
        """What `mailer up` decided (the web's address, the sink's port) for every
        other process on the same data directory, unless the environment says."""
        recorded = read_recorded(self.data_dir)
        base_url, sink_port = recorded.get("base_url"), recorded.get("sink_port")
        if "base_url" not in self.model_fields_set and isinstance(base_url, str) and base_url:
            self.base_url = base_url.rstrip("/")
        if "sink_port" not in self.model_fields_set and isinstance(sink_port, int):
            self.sink_port = sink_port
        return self

    # -- derived values -------------------------------------------------

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mailer.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def uses_sink(self) -> bool:
        """No SMTP configured: mail goes to the built-in sink and its outbox."""
        return not self.smtp_url

    @property
    def smtp(self) -> str:
        return self.smtp_url or f"smtp://{self.sink_host}:{self.sink_port}"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def email_templates(self) -> Path:
        return self.templates_dir or ROOT / "templates" / "email"

    @property
    def base_host(self) -> str:
        return urlsplit(self.base_url).hostname or "localhost"

    def secret(self) -> str:
        """The signing key; generated once and kept in data_dir in development."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value()
        if self.env == "production":
            raise ConfigError("MAILER_SECRET_KEY is not set; production mode needs a secret key")
        return self._kept_secret("secret.key", 32)

    def api_secret(self) -> str:
        """The operator API's bearer token; generated once in development.

        A production token shorter than API_TOKEN_MIN_LENGTH is refused: the API
        answers a wrong token as fast as it can serve, so the token's length is
        what stands between it and guessing (the admin form is rate-limited too).
        """
        if self.api_token is not None and self.api_token.get_secret_value():
            token = self.api_token.get_secret_value()
            if self.env == "production" and len(token) < API_TOKEN_MIN_LENGTH:
                raise ConfigError(
                    f"MAILER_API_TOKEN is {len(token)} characters; production needs at least "
                    f"{API_TOKEN_MIN_LENGTH} (e.g. openssl rand -base64 24)"
                )
            return token
        if self.env == "production":
            raise ConfigError("MAILER_API_TOKEN is not set; production mode needs an API token")
        return self._kept_secret("api.token", 24)

    def _kept_secret(self, name: str, nbytes: int) -> str:
        """A development secret: made on first use and kept in data_dir, readable by us
        alone, so every process on that directory shares it across restarts."""
        path = self.data_dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(nbytes))
            path.chmod(0o600)
        return path.read_text().strip()

    def check(self) -> None:
        """Fail at start-up, with a message, on settings production can't run with."""
        self.secret()
        self.api_secret()
        if self.env == "production":
            if self.database.startswith("sqlite"):
                raise ConfigError("production mode needs MAILER_DATABASE_URL (PostgreSQL)")
            if not self.smtp_url:
                raise ConfigError("production mode needs MAILER_SMTP_URL")
        if not self.email_templates.is_dir():
            raise ConfigError(
                f"MAILER_TEMPLATES_DIR {self.email_templates} is not a directory of templates"
            )
        if bool(self.dkim_selector) != bool(self.dkim_private_key_path):
            raise ConfigError(
                "DKIM needs both MAILER_DKIM_SELECTOR and MAILER_DKIM_PRIVATE_KEY_PATH"
            )
        if self.dkim_private_key_path and not self.dkim_private_key_path.is_file():
            raise ConfigError(
                f"MAILER_DKIM_PRIVATE_KEY_PATH {self.dkim_private_key_path} is not a file "
                "(make one with `mailer dkim keygen`)"
            )
        for url in (self.smtp,):
            if urlsplit(url).scheme not in ("smtp", "smtps"):
                raise ConfigError(
                    f"MAILER_SMTP_URL must start with smtp:// or smtps://, got {url!r}"
                )


# `mailer up` writes here where its web and sink answer, so a command run from another
# shell on the same data directory (`mailer digest send`, `preview`, `test`) puts the
# web's address in its links and reaches the sink, instead of the defaults.
RECORDED = "up.json"


def read_recorded(data_dir: Path) -> dict[str, object]:
    try:
        found = json.loads((data_dir / RECORDED).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def record_up(data_dir: Path, *, base_url: str, sink_port: int | None) -> None:
    """Called by `mailer up` once it knows its addresses; replaced on every start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fresh = data_dir / f"{RECORDED}.tmp"
    fresh.write_text(json.dumps({"base_url": base_url, "sink_port": sink_port}) + "\n")
    fresh.replace(data_dir / RECORDED)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
