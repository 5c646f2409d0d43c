"""Server-side request forgery: deliveries go only where the operator allows. Every connection tried here is to
127.0.0.1; other addresses are only checked, never connected to."""
import ipaddress

import pytest

from outbound.destinations import DestinationRefused, address_allowed, check_url, resolve
from outbound.transport import post

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "224.0.0.1",
                                     "::ffff:127.0.0.1"])
def test_it_refuses_private_loopback_and_link_local_addresses_by_default(address):
    assert not address_allowed(ipaddress.ip_address(address))


def test_it_allows_global_addresses():
    assert address_allowed(ipaddress.ip_address("93.184.215.14"))


def test_a_listed_network_is_allowed(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert not address_allowed(ipaddress.ip_address("192.168.1.1"))


def test_a_url_with_a_private_literal_address_is_refused_when_registered():
    with pytest.raises(DestinationRefused):
        check_url("http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize("url", ["ftp://example.org/x", "file:///etc/passwd", "http:///nohost",
                                 "http://user:pw@example.org/"])
def test_other_schemes_and_credentials_are_refused(url):
    with pytest.raises(DestinationRefused):
        check_url(url)


def test_allowed_hosts_limit_the_names(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["hooks.example.org", "*.billing.example.com"]
    check_url("https://hooks.example.org/x")
    check_url("https://eu.billing.example.com/x")
    with pytest.raises(DestinationRefused):
        check_url("https://example.org/x")


def test_a_name_that_resolves_to_loopback_is_refused_when_connecting(receiver, settings):
    hook = receiver()
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # the name passes the text check; its address does not
    url = hook.url.replace("127.0.0.1", "localhost")
    check_url(url)
    with pytest.raises(DestinationRefused):
        resolve("localhost", 80)
    with pytest.raises(DestinationRefused):
        post(url, b"{}", {}, timeout=2, body_cap=100)
    assert hook.received == []


def test_a_webhook_to_loopback_is_delivered_once_its_network_is_allowed(receiver):
    hook = receiver()
    answer = post(hook.url, b"{}", {"Content-Type": "application/json"}, timeout=2, body_cap=100)
    assert answer.status == 200 and len(hook.received) == 1
