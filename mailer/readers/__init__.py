"""Readers: newsletters and topics, subscriptions and their states, addresses,
suppressions, notices, bulk import.

Everything about a person on a list lives here: how an address is read and
keyed, what a newsletter offers (`newsletters`: creating and checking
newsletters, senders, topics, frequencies), how a subscription moves between
states, who must never be mailed, the confirm and welcome notices, and the
CSV/spreadsheet import. It may import the
shared ground (`mailer.config`, `mailer.db`, `mailer.models`) and `mailer.mail`;
never `mailer.bounces` (which acts on readers), the web, the CLI or the tasks.
"""
