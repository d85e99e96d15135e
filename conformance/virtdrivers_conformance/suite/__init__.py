"""The shared conformance suite. Subclass :class:`ConformanceSuite` and provide a ``driver`` fixture.

See :mod:`virtdrivers_conformance.suite.fixtures` for the knobs and an example.
"""

from virtdrivers_conformance.suite.fixtures import PROBED_KEY, DriverFixtures, feature, unique_name
from virtdrivers_conformance.suite.tests import (
    TestCluster,
    TestEvents,
    TestFormats,
    TestHostileInput,
    TestLifecycle,
    TestMigration,
    TestPets,
    TestPower,
    TestReap,
    TestResize,
    TestSecrets,
    TestSnapshots,
    TestStorage,
    TestUnknownInstances,
    TestWorkloads,
)

__all__ = ["PROBED_KEY", "ConformanceSuite", "DriverFixtures", "feature", "unique_name"]


class ConformanceSuite(
    TestLifecycle,
    TestPower,
    TestResize,
    TestStorage,
    TestFormats,
    TestSnapshots,
    TestMigration,
    TestCluster,
    TestPets,
    TestEvents,
    TestUnknownInstances,
    TestSecrets,
    TestReap,
    TestHostileInput,
    TestWorkloads,
):
    """Every conformance test. Subclass it as ``TestYourDriver`` and override the ``driver`` fixture."""
