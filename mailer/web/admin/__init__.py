"""/admin: the server-rendered operator page (views.py) and its login cookie (cookie.py).

The views go through the same `mailer.operators` functions as the API and the
CLI and may import `mailer.web.deps` and `mailer.web.pages`; cookie.py says
who is logged in (the signed cookie, its CSRF token), against the live
sessions that `mailer.operators.admin_sessions` keeps so that logging out is
real. Nothing below the web imports this package; the web's `auth`
middleware asks cookie.py whether a POST comes from a live session.
"""
