import pytest

from mailer.readers.addresses import InvalidAddress, address_hash, normalise


def test_domain_is_lowercased_and_local_part_kept_as_typed():
    address = normalise("  Jane.Doe@Example.COM ")
    assert address.email == "Jane.Doe@example.com"
    assert address.key == "jane.doe@example.com"


def test_case_variants_share_one_key_and_hash():
    assert normalise("A@x.org").key == normalise("a@X.ORG").key
    assert address_hash("A@x.org") == address_hash("a@x.org")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "plainaddress",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        "x@y.com\r\nBcc: v@z.com",
        "x@y.com\nBcc: v@z.com",
        "a" * 300 + "@x.com",
        '"quoted"@x.com',
    ],
)
def test_malformed_addresses_are_refused_with_a_message(raw):
    with pytest.raises(InvalidAddress) as info:
        normalise(raw)
    assert str(info.value)


def test_internationalised_domain_is_accepted():
    assert normalise("user@bücher.de").email == "user@bücher.de"


def test_internationalised_local_part_is_accepted():
    assert normalise("пользователь@пример.рф").email == "пользователь@пример.рф"


# Addresses the fast split answers, and addresses it must leave to split_email.
EVERYDAY = [
    "a@example.org",
    "@example.org",
    "a@",
    "a b@example.org",
    "a\\b@example.org",
    "a>b@example.org",
]
LEFT_TO_SPLIT_EMAIL = [
    "a@b@example.org",
    "a@@example.org",
    "no-at-sign.example.org",
    '"quoted@local"@example.org',
    '"a"@example.org',
    "Reader <a@example.org>",
    "<a@example.org>",
    "a<b@example.org",
    "a\u0301@example.org",
    "a@\u0338example.org",
    "ü@example.org",
    "a@münchen.de",
    "a＠example.org",
    "a﹫example.org",
]


@pytest.mark.parametrize("raw", EVERYDAY)
def test_the_plain_split_of_an_everyday_address_is_split_email_s_own(raw):
    from email_validator.syntax import split_email

    from mailer.readers.addresses import plain_split

    assert plain_split(raw) == split_email(raw)


@pytest.mark.parametrize("raw", LEFT_TO_SPLIT_EMAIL)
def test_quotes_brackets_unicode_and_stray_at_signs_are_left_to_split_email(raw):
    from mailer.readers.addresses import plain_split

    assert plain_split(raw) is None
