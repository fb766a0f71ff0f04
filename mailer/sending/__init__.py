"""Sending: the workers' side of a send, the live senders' heartbeats and the global send rate.

The send loop itself (claims, marks, sweeps) still lives in `mailer.delivery`
and moves in here when that module is cut up. This part may import the shared
ground (`mailer.config`, `mailer.db`, `mailer.models`), `mailer.mail` and
`mailer.readers`; never the web, the CLI or the tasks.
"""
