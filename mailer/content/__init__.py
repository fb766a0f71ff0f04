"""Content: articles, the feeds that bring them, page import, and the one article cleaner.

What an edition is made of comes in here, from outside (feeds, pushed JSON,
imported pages), is checked and normalised (`incoming`), and is stored
(`articles`) as clean, deduplicated articles with topics. It may
import the shared ground (`mailer.config`, `mailer.db`, `mailer.models`,
`mailer.outbound` for fetching, `mailer.jsondata`) and `mailer.readers` (topic
slugs); never the web, the CLI or the tasks.
"""
