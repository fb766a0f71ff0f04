"""No fetch reaches our own network: not directly, not through a redirect, in any address form.

The feed and page fetches run on a test host of their own (a network
namespace, tests/helpers/netns.py) where a site on a public-looking address
redirects to 127.0.0.1, ::1, localhost, ::ffff:127.0.0.1, 2130706433 and the
cloud metadata address, and an internal server on 127.0.0.1 holds a secret.
"""

from __future__ import annotations

import ipaddress

import pytest

from mailer import outbound
from mailer.config import Settings
from tests.helpers.netns import PUBLIC_LOOKING, run_in_netns


def test_redirects_into_our_network_are_refused_for_feeds_and_pages(tmp_path):
    out = run_in_netns(PUBLIC_LOOKING, "tests.helpers.netns_fetch", PUBLIC_LOOKING, str(tmp_path))
    polls = out["polls"]
    assert polls.pop("public").startswith("2 new"), polls  # the public feed still works
    for name, outcome in polls.items():
        assert outcome.startswith("error: refused to connect to"), (name, outcome)
    assert "127.0.0.1" in polls["loopback"] and "loopback" in polls["ipv4-mapped"]
    assert "link-local" in polls["metadata"]
    assert "refused to connect" in out["page"]
    assert out["internal_requests"] == []  # nothing inside was ever asked
    assert out["articles"] == 2  # the public feed's, and nothing from inside
    assert out["allowed"] == "ok"  # MAILER_FETCH_ALLOW_PRIVATE=true lets it through


def test_a_feed_on_loopback_is_refused_without_a_request_unless_allowed(settings):
    from tests.fixtures.feedserver import FeedServer, fixture

    server = FeedServer()
    try:
        url = server.serve("/feed", fixture("feeds/atom.xml"))
        refused = outbound.fetch(url, settings)
        assert refused.status == "error" and "a loopback address" in (refused.error or "")
        assert server.seen == []
        allowed = outbound.fetch(url, settings.model_copy(update={"fetch_allow_private": True}))
        assert allowed.status == "ok" and len(server.seen) == 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
        "169.254.169.254", "0.0.0.0", "255.255.255.255", "224.0.0.1", "240.0.0.1",
        "192.0.2.1", "198.51.100.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1",
        "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
        "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1", "2001:db8::1", "2001::1",
    ],
)  # fmt: skip
def test_every_non_public_address_form_is_refused(address):
    assert outbound.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "64:ff9b::101:101", "2002:101:101::1"],
)
def test_public_addresses_and_their_ipv6_forms_are_allowed(address):
    assert outbound.refusal(ipaddress.ip_address(address)) is None


def test_the_setting_is_off_unless_turned_on(monkeypatch):
    monkeypatch.delenv("MAILER_FETCH_ALLOW_PRIVATE", raising=False)
    assert Settings().fetch_allow_private is False
    monkeypatch.setenv("MAILER_FETCH_ALLOW_PRIVATE", "true")
    assert Settings().fetch_allow_private is True
