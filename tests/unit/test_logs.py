import logging

import pytest

from mailer.config import Settings
from mailer.logs import install


@pytest.fixture
def captured():
    logger = logging.getLogger("mailer.test.logs")
    logger.propagate = False
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    yield logger, records
    logger.handlers = []


def settings(**kw):
    return Settings(
        secret_key="s3cr3t-signing-key",
        api_token="api-t0ken-value",
        smtp_url="smtp://user:smtp-pa55word@mail.example:587",
        **kw,
    )


def test_secrets_never_reach_a_log_line(captured):
    logger, records = captured
    install(settings(), logger)
    logger.info("key %s token %s", "s3cr3t-signing-key", "api-t0ken-value")
    logger.info("connecting to smtp://user:smtp-pa55word@mail.example:587")
    try:
        raise RuntimeError("auth failed for smtp-pa55word")
    except RuntimeError:
        logger.exception("send failed")
    text = "\n".join(records)
    for secret in ("s3cr3t-signing-key", "api-t0ken-value", "smtp-pa55word"):
        assert secret not in text
    assert text.count("***") >= 4


def test_addresses_are_kept_by_default_and_redacted_on_request(captured):
    logger, records = captured
    install(settings(), logger)
    logger.info("sent to %s", "Reader@example.org")
    install(settings(redact_addresses=True), logger)
    logger.info("sent to %s", "Reader@example.org")
    assert "Reader@example.org" in records[0]
    assert "Reader@example.org" not in records[1] and "R***@example.org" in records[1]
