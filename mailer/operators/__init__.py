"""The operator's side of the store: one function per thing an operator does.

One set of functions serves the JSON API, the admin page and the CLI, so they
can never disagree about a rule; the pydantic schemas the API answers with sit
beside the functions that fill them. One module per area (newsletters, feeds,
subscribers with GDPR export and erasure, suppressions, schedules, stats,
articles, editions), their refusals in `errors`, admin login sessions in
`admin_sessions`. Modules here may import the domain below them (`readers`,
`content`, `mail`, `digests`/`editions`, `models`, `db`) and each other, never
`web`, `cli` or `tasks`; no FastAPI, no Celery.
"""
