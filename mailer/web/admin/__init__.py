"""/admin: the server-rendered operator page (views.py) and its live sessions (sessions.py).

The views go through the same `mailer.operators` functions as the API and the
CLI and may import `mailer.web.deps` and `mailer.web.pages`; sessions.py is the
server-side record that makes logging out real. Nothing below the web imports
this package; the web's `auth` middleware asks views.py whether a POST comes
from a live session.
"""
