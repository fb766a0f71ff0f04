"""Our own subscribe form: a reader's mistake shows the form again as they filled it."""

from __future__ import annotations

from markupsafe import escape

from mailer.readers import newsletters

# Typed by a reader, or by someone who hopes the page will run it.
NO_AT_SIGN = '"><script>alert(1)</script>example.org'


def test_a_bad_address_shows_the_form_again_with_what_is_wrong_and_what_was_typed(
    api, session
) -> None:
    nl = newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    for name in ("Python", "Rust"):
        newsletters.ensure_topic(session, nl, name)
    session.commit()

    form = {"newsletter": "news", "email": NO_AT_SIGN, "topics": "rust", "frequency": "weekly"}
    answer = api.post("/subscribe", data=form)

    assert answer.status_code == 422
    page = answer.text
    assert 'role="alert">That email address is not valid' in page
    assert "must have an @-sign" in page
    assert '<form class="card" method="post" action="/subscribe">' in page
    assert f'value="{escape(NO_AT_SIGN)}"' in page
    assert "<script>alert(1)</script>" not in page
    assert 'value="rust" checked' in page and 'value="python" checked' not in page
    assert 'value="weekly" checked' in page
    assert "Subscribe to News" in page


def test_a_bad_address_from_a_sites_own_form_is_still_the_json_answer(api, session) -> None:
    newsletters.create_newsletter(session, "news", "News", "News <news@example.org>")
    session.commit()
    answer = api.post("/subscribe", json={"newsletter": "news", "email": "no-at-sign"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "email"]
