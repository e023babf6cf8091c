"""Service ports for tests come from below the ephemeral range, so no outgoing connection can take one
between the pick and the service's bind, and one process never gets the same port twice."""

from __future__ import annotations

import socket

from tests.support import free_port


def test_free_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral_low = int(ranges.read().split()[0])
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == 50
    assert all(30000 <= port < 32768 for port in ports)
    assert all(port < ephemeral_low for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))  # as uvicorn binds a service
