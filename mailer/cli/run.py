"""`mailer web` and `mailer up`."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web app (reader pages and operator API)."""
    import uvicorn

    from mailer.web.app import create_app

    uvicorn.run(create_app(), host=host, port=port)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def up(host: str, port: int) -> None:
    """Run web, worker, beat and the SMTP sink together."""
    raise click.ClickException("not yet")
