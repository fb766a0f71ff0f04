"""The SMTP client drives the conversation itself; its DATA payload must be smtplib's."""

import random
import re
import smtplib

from mailer.mail.transport import dot_stuff


def smtplib_payload(data: bytes) -> bytes:
    """What smtplib.SMTP.data() puts on the wire for bytes (its own quoting and ending)."""
    quoted = smtplib._quote_periods(data)  # type: ignore[attr-defined]
    if quoted[-2:] != smtplib.bCRLF:
        quoted += smtplib.bCRLF
    return quoted + b"." + smtplib.bCRLF


def test_dot_stuffing_is_byte_for_byte_smtplibs():
    rng = random.Random(7)
    pieces = [b".", b"..", b"a", b"\r\n", b"\n", b"\r", b" ", b".\r\n", b"=2E"]
    cases = [b"", b".", b".\r\n", b"a\r\n.\r\n", b"\r\n..x", b"x\n.y"]
    cases += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for data in cases:
        assert dot_stuff(data) == smtplib_payload(data), data


def test_a_line_of_a_single_dot_cannot_end_the_message_early():
    wire = dot_stuff(b"Subject: x\r\n\r\nbefore\r\n.\r\nafter\r\n")
    assert re.findall(rb"\r\n\.\r\n", wire) == [b"\r\n.\r\n"]  # only the real terminator
    assert wire.endswith(b"after\r\n.\r\n")
