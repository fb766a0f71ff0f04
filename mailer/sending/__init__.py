"""Sending: the workers' side of a send, from claiming a row to recording its reply.

`loop.send_range` sends one range of an edition over one SMTP connection:
`claims` reads the rows that may go now, `outgoing` builds each reader's
bytes from the variant's template, `marks` writes every claim and reply (on
PostgreSQL through libpq, one round trip per message). `sweeps` is the
tick's part (leases of dead workers, ranges whose task was lost), `senders`
the live senders' heartbeats, `ratelimit` the global send rate and
`testmail` the operator's test send.

This part may import the shared ground (`mailer.config`, `mailer.db`,
`mailer.models`), `mailer.mail`, `mailer.readers` and `mailer.editions`
(ranges, the draft a test send mails); never `mailer.bounces` (VERP return
paths are `mail.verp`, the soft-bounce reset `readers.subscriptions`), the web,
the CLI or the tasks.
"""
