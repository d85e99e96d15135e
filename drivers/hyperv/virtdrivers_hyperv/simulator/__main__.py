"""``python -m virtdrivers_hyperv.simulator``: see :mod:`virtdrivers_hyperv.simulator.app`."""

from virtdrivers_hyperv.simulator.app import main

raise SystemExit(main())
