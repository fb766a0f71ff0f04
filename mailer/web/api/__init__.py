"""The operator JSON API under /api: one module of thin routes per area.

core.py holds the newsletters, feeds, topics, schedules, subscribers,
suppressions and stats routes and the route class every API router uses;
editions.py, articles.py and bounces.py take theirs from it. Each route calls
one `mailer.operators` function (the one the CLI and the admin page call) and
may import `mailer.web.deps`, never another part of the web (admin pages,
reader pages) nor the tasks' internals beyond enqueueing.
"""
