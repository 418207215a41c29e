"""Emulated hosts for tests: runtime.netemu's Network puts each role in a Linux network namespace of its own, on a
bridge, with links shaped, cut and healed while a job runs (see runtime.netemu for the API and what is emulated).

    with emulated_hosts(["ps0", "worker0", "worker1"]) as net:
        children.start("ps", "runtime.ps", "--listen", f"{net.address('ps0')}:0", ..., prefix=net.command("ps0", []))
        net.cut("worker1"); ...; net.heal("worker1")

A test that uses it is skipped, with the reason, exactly when this machine cannot create network namespaces (not
root, or `ip netns add` fails); anything else that goes wrong (tc or nft missing, a command failing) fails it.
"""

from __future__ import annotations

import pytest

from runtime.netemu import Hosts, Network, NetworkError, Shape, cleanup_stale, namespaces_unavailable

__all__ = ["Hosts", "Network", "NetworkError", "Shape", "cleanup_stale", "emulated_hosts", "require_namespaces"]


def require_namespaces() -> None:
    """Skip the calling test, with the reason, when this machine cannot create network namespaces."""
    reason = namespaces_unavailable()
    if reason is not None:
        pytest.skip(reason)


def emulated_hosts(hosts: list[str]) -> Network:
    """A Network of these hosts (use it as a context manager), or a skip when namespaces cannot be created here."""
    require_namespaces()
    return Network(hosts)
