"""`mailer dkim keygen|record`: make a signing key and say what to publish in DNS."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli.base import console
from mailer.config import get_settings
from mailer.mail.dkim import DKIMError, DKIMSigner, dns_record, generate_private_key


@click.group()
def dkim() -> None:
    """DKIM signing keys."""


def _default_domain() -> str:
    settings = get_settings()
    if "@" in settings.bounce_address:
        return settings.bounce_address.rpartition("@")[2].strip(" >")
    return settings.base_host


@dkim.command()
@click.option(
    "--selector", default=None, help="DNS selector [default: MAILER_DKIM_SELECTOR or mailer]"
)
@click.option("--domain", default=None, help="The From domain [default: from the settings].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the key [default: MAILER_DKIM_PRIVATE_KEY_PATH or DATA_DIR/dkim/].",
)
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
def keygen(selector: str | None, domain: str | None, out: Path | None, bits: int) -> None:
    """Write a new private key and print its DNS record.

    The key file gets mode 0600; the TXT record is printed for you to publish."""
    settings = get_settings()
    selector = selector or settings.dkim_selector or "mailer"
    domain = (domain or _default_domain()).strip().rstrip(".").lower()
    path = out or settings.dkim_private_key_path or settings.data_dir / "dkim" / f"{selector}.pem"
    try:
        generate_private_key(path, bits)
        signer = DKIMSigner.from_file(selector, path)
        record = dns_record(selector, domain, signer.private_key)
    except DKIMError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path} (mode 0600)", err=True)
    click.echo("publish this TXT record, then set:", err=True)
    click.echo(f"  MAILER_DKIM_SELECTOR={selector}", err=True)
    click.echo(f"  MAILER_DKIM_PRIVATE_KEY_PATH={path.resolve()}", err=True)
    click.echo(record)


@dkim.command()
@click.option("--domain", default=None, help="The From domain [default: from the settings].")
def record(domain: str | None) -> None:
    """Print the DNS TXT record for the configured key."""
    settings = get_settings()
    if not settings.dkim_selector or not settings.dkim_private_key_path:
        raise click.ClickException(
            "set MAILER_DKIM_SELECTOR and MAILER_DKIM_PRIVATE_KEY_PATH, or run `mailer dkim keygen`"
        )
    try:
        signer = DKIMSigner.from_file(settings.dkim_selector, settings.dkim_private_key_path)
        line = dns_record(
            signer.selector, (domain or _default_domain()).lower(), signer.private_key
        )
    except DKIMError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(line, soft_wrap=True, highlight=False)
