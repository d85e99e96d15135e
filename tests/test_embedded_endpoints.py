"""Every embedded endpoint of every installed backend starts from a cold state, answers, and stops clean.

``./dev parity`` and the CLI's ``--embedded`` depend on these peers coming up on
a machine that has never run them: a first two-daemon libvirt start once took
longer than 30 s and was reported as a failure. Each endpoint polls its peer for
readiness with a generous deadline of its own; this test starts each one in a
fresh scratch state, connects its driver, reads nodes and the backend version,
and checks what the endpoint promises the suite: a node for every instance, a
secret-bearing setting, and the evidence level it declares.
"""

from __future__ import annotations

import time

import pytest

import virtdrivers
from virtdrivers import Evidence

ENDPOINTS = [
    (entry.name, endpoint)
    for entry in virtdrivers.list_drivers()
    if entry.driver_class is not None
    for endpoint in entry.driver_class.embedded_endpoints()
]


@pytest.mark.parametrize(("driver", "endpoint"), ENDPOINTS, ids=[f"{d}@{e.name}" for d, e in ENDPOINTS])
def test_endpoint_starts_cold_and_answers(driver: str, endpoint: virtdrivers.EmbeddedEndpoint) -> None:
    cls = virtdrivers.driver_class(driver)
    started = time.monotonic()
    with endpoint.start() as settings, cls(**settings) as connected:
        ready = time.monotonic() - started
        nodes = connected.list_nodes()
        info = connected.backend_info()
        secrets = connected.settings.secrets()
    where = f"{driver}@{endpoint.name}"
    print(f"{where}: ready in {ready:.1f}s, {len(nodes)} node(s), {info.backend} {info.backend_version}")
    assert nodes, "the endpoint has no compute node"
    assert info.backend
    assert isinstance(endpoint.evidence, Evidence)
    if endpoint.evidence is Evidence.PROJECT_SIMULATOR:
        assert endpoint.backend, "a project simulator names itself as the backend, not the product it imitates"
    assert secrets, "the endpoint offers no secret-bearing setting, so secret handling goes unchecked"
