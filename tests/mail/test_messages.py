from email import message_from_bytes, policy

import pytest

from mailer.mail.messages import (
    HeaderInjection,
    MessageTemplate,
    Slot,
    Slots,
    envelope_address,
    list_id_value,
)

SLOTS = Slots.fresh()
EMAIL = SLOTS.marker(Slot.EMAIL)
UNSUBSCRIBE = SLOTS.marker(Slot.UNSUBSCRIBE_URL)


def template(**kw):
    defaults = dict(
        sender="News <news@example.org>",
        subject="Weekly — all the news ✉",
        html=f"<p>Hi {EMAIL}</p><a href='{UNSUBSCRIBE}'>u</a>" + "x" * 3000,
        text=f"Hi {EMAIL}\nUnsubscribe: {UNSUBSCRIBE}\n",
        list_id="News <news.example.org>",
        list_unsubscribe_mailto="news@example.org",
        extra_headers={"Precedence": "bulk"},
        slots=SLOTS,
    )
    defaults.update(kw)
    return MessageTemplate(**defaults)


def test_built_message_parses_back_with_headers_and_personal_values():
    data, msgid = template().build(
        "Reader@example.com",
        unsubscribe_url="https://x.test/unsubscribe/TOKEN",
        values={
            Slot.EMAIL: "Reader&<x>@example.com",
            Slot.UNSUBSCRIBE_URL: "https://x.test/unsubscribe/TOKEN",
        },
    )
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["To"] == "Reader@example.com"
    assert msg["Subject"] == "Weekly — all the news ✉"
    assert msg["Message-ID"] == msgid and msgid.startswith("<") and msgid.endswith("@example.org>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<https://x.test/unsubscribe/TOKEN>" in msg["List-Unsubscribe"]
    assert "mailto:news@example.org" in msg["List-Unsubscribe"]
    assert msg["Precedence"] == "bulk" and msg["Auto-Submitted"] == "auto-generated"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    html = msg.get_body(("html",)).get_content()
    assert "Reader&amp;&lt;x&gt;@example.com" in html and "https://x.test/unsubscribe/TOKEN" in html
    assert "Reader&<x>@example.com" in msg.get_body(("plain",)).get_content()


def test_wire_bytes_use_crlf_and_short_lines():
    data, _ = template(html="<p>" + "y" * 5000 + "</p>").build("a@example.com")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@pytest.mark.parametrize("field", ["subject", "sender"])
def test_header_injection_is_refused(field):
    with pytest.raises(HeaderInjection):
        template(**{field: "Hello\r\nBcc: victim@example.com"})


def test_recipient_with_line_break_is_refused():
    with pytest.raises(HeaderInjection):
        template().build("a@example.com\r\nBcc: victim@example.com")


def test_envelope_converts_unicode_domain_to_ascii_and_flags_unicode_local_part():
    assert envelope_address("user@bücher.de").address == "user@xn--bcher-kva.de"
    assert not envelope_address("user@bücher.de").smtputf8
    assert envelope_address("юзер@пример.рф").smtputf8


def test_an_idn_address_with_an_ascii_local_part_is_punycode_in_to_not_an_encoded_word():
    data, _ = template(sender="Bücher <news@bücher.example>").build("leser@bücher.example")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"To: leser@xn--bcher-kva.example\r\n" in head
    assert b"From: =?utf-8?" in head and b"<news@xn--bcher-kva.example>" in head
    assert head.isascii()


@pytest.mark.parametrize(
    "name",
    ['Weekly "Picks", <Ed.>', "Täglich: Bücher & Co.", "Plain Name", "back\\slash (and) @"],
)
def test_list_id_carries_the_name_as_a_proper_phrase(name):
    data, _ = template(list_id=list_id_value(name, "news.example.org")).build("a@example.com")
    raw = data.split(b"\r\n\r\n", 1)[0].split(b"List-Id: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw.isascii() and raw.endswith(b" <news.example.org>")
    # The part before <list-id> is a phrase: read as an address's display name (the same
    # grammar), it decodes back to the name exactly, however many specials it holds.
    phrase = raw.decode().removesuffix(" <news.example.org>")
    parsed = policy.default.header_factory("To", f"{phrase} <x@example.org>")
    assert [a.display_name for a in parsed.addresses] == [name]
