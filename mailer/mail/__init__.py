"""Mail as bytes on the wire: MIME, rendering, the SMTP transport, DKIM, links, tokens,
VERP return paths.

This part knows how a message is built, signed and handed to a relay, and
nothing of readers, newsletters or editions: it may import the shared ground
(`mailer.config`, `mailer.models`, `mailer.db`, `mailer.outbound`) and its own
modules, never a domain package, the web, the CLI or the tasks.
"""
