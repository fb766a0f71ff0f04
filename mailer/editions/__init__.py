"""Editions: when they are due, which articles each reader gets, shared variants, closing.

An edition is named by its window (the schedule's fire times, `schedule`) but
carries articles by *arrival*: it is cut when it is prepared (`Digest.cut_at`,
timed against arrivals under a lock, `content.articles.edition_cut`), and each
reader gets what became due after their own last cut up to this one, whatever
its published date (`plan.Plan`, by the rule in `selection`, minus what
`reservations` says they hold). `prepare` groups readers by the exact list of
articles they get into variants rendered once (`render`) and writes every
delivery row; `close` ends an edition once no row can change; `preview` shows
the next one before it is cut and a sent one in the browser.

This part may import the shared ground (`mailer.config`, `mailer.db`,
`mailer.models`), `mailer.mail`, `mailer.readers` and `mailer.content`; never
`mailer.sending`, the web, the CLI or the tasks.
"""
