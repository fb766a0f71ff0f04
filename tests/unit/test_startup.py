"""Start-up refuses what production can't run with, and says what to do."""

import pytest
from click.testing import CliRunner

from mailer.cli import main
from mailer.config import ConfigError, Settings
from mailer.migrate import NotMigrated
from mailer.web.app import create_app

TOKEN = "a-long-enough-operator-api-token"


@pytest.fixture(autouse=True)
def no_secrets_in_environment(monkeypatch):
    monkeypatch.delenv("MAILER_SECRET_KEY", raising=False)
    monkeypatch.delenv("MAILER_API_TOKEN", raising=False)


def test_production_without_secret_key_is_a_startup_error(tmp_path):
    settings = Settings(
        env="production",
        data_dir=tmp_path,
        api_token=TOKEN,
        database_url="postgresql+psycopg://x@127.0.0.1/x",
        smtp_url="smtp://h:25",
    )
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEY"):
        create_app(settings)
    assert not (tmp_path / "secret.key").exists()


def test_production_without_api_token_is_a_startup_error(tmp_path):
    settings = Settings(
        env="production",
        data_dir=tmp_path,
        secret_key="s",
        database_url="postgresql+psycopg://x@127.0.0.1/x",
        smtp_url="smtp://h:25",
    )
    with pytest.raises(ConfigError, match="MAILER_API_TOKEN"):
        settings.check()


def test_production_refuses_an_api_token_short_enough_to_guess(tmp_path):
    settings = Settings(
        env="production",
        data_dir=tmp_path,
        secret_key="s",
        api_token="x" * 23,
        database_url="postgresql+psycopg://x@127.0.0.1/x",
        smtp_url="smtp://h:25",
    )
    with pytest.raises(ConfigError, match=r"MAILER_API_TOKEN is 23 characters; .* at least 24"):
        settings.check()
    assert settings.model_copy(update={"env": "development"}).api_secret() == "x" * 23


def test_production_on_the_embedded_database_is_refused(tmp_path):
    settings = Settings(
        env="production", data_dir=tmp_path, secret_key="s", api_token=TOKEN, smtp_url="smtp://h:25"
    )
    with pytest.raises(ConfigError, match="MAILER_DATABASE_URL"):
        settings.check()


def test_development_generates_and_keeps_a_secret(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = settings.secret()
    assert len(first) >= 32 and Settings(data_dir=tmp_path).secret() == first
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0


def test_bad_smtp_url_scheme_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="smtp://"):
        Settings(data_dir=tmp_path, smtp_url="http://mail.example:25").check()


def test_web_app_refuses_an_unmigrated_database(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(NotMigrated, match="mailer db upgrade"):
        create_app(settings)


def test_cli_on_an_unmigrated_database_says_what_to_run(tmp_path, monkeypatch):
    from mailer import config

    monkeypatch.setenv("MAILER_DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    config.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["newsletter", "list"])
        assert result.exit_code == 1 and "mailer db upgrade" in result.output
        assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
        assert CliRunner().invoke(main, ["newsletter", "list"]).exit_code == 0
    finally:
        config.get_settings.cache_clear()


def test_an_everyday_command_does_not_print_alembic_s_start_up_lines(tmp_path, monkeypatch, caplog):
    """`mailer db upgrade` says what it ran; `mailer newsletter list` says only the list."""
    import logging

    from mailer import config

    monkeypatch.setenv("MAILER_DATABASE_URL", f"sqlite:///{tmp_path}/m.db")
    config.get_settings.cache_clear()
    try:
        with caplog.at_level(logging.INFO):
            assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
            upgraded = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
            caplog.clear()
            assert CliRunner().invoke(main, ["newsletter", "list"]).exit_code == 0
            listed = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    finally:
        config.get_settings.cache_clear()
    assert any("Running upgrade" in m for m in upgraded)
    assert listed == []
    assert logging.getLogger("alembic.runtime.migration").level == logging.NOTSET


def test_a_dkim_selector_without_a_key_path_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="MAILER_DKIM_PRIVATE_KEY_PATH"):
        Settings(data_dir=tmp_path, dkim_selector="mail").check()


def test_a_dkim_key_path_that_is_not_a_file_is_refused_at_start(tmp_path):
    settings = Settings(
        data_dir=tmp_path, dkim_selector="mail", dkim_private_key_path=tmp_path / "missing.pem"
    )
    with pytest.raises(ConfigError, match=r"missing\.pem is not a file"):
        settings.check()


def test_an_empty_dkim_key_path_in_the_environment_means_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILER_DKIM_PRIVATE_KEY_PATH", "")
    settings = Settings(data_dir=tmp_path)
    assert settings.dkim_private_key_path is None
    settings.check()
