"""Bounces and complaints: reading the reports, acting on them, fetching them.

`reports` reads a DSN or ARF report and changes nothing; `outcomes` is the one
place a report changes the store (through `readers.subscriptions`, where the
hard-bounce and soft-bounce rules live); `mailboxes` polls a Maildir or an IMAP
mailbox and hands each message to `outcomes`. The VERP return paths a report is
checked against live in `mailer.mail.verp`, so the send path never imports this
package. It may import the shared ground, `mailer.mail` and `mailer.readers`;
never the sending side, the web, the CLI or the tasks.
"""
