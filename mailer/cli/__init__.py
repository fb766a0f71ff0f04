"""The operator CLI. Each command group lives in its own module and registers here."""

from __future__ import annotations

import click

from mailer.cli.articles import article, feed, topic
from mailer.cli.base import main
from mailer.cli.bounces import bounces_group
from mailer.cli.db import db
from mailer.cli.digests import digest
from mailer.cli.dkim import dkim
from mailer.cli.newsletters import newsletter
from mailer.cli.run import beat, web, worker
from mailer.cli.schedules import schedule
from mailer.cli.stats import stats
from mailer.cli.subscribers import subscribers
from mailer.cli.suppressions import suppression
from mailer.cli.up import up

for command in (db, newsletter, up, web, worker, beat):
    main.add_command(command)
for command in (feed, article, topic):
    main.add_command(command)
main.add_command(digest)
main.add_command(bounces_group)
main.add_command(dkim)
for command in (subscribers, suppression, schedule, stats):
    main.add_command(command)

__all__ = ["click", "main"]
