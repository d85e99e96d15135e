"""Makes the sample-matrix builder beside these tests importable as ``matrix_sample``.

The test tree runs under ``--import-mode=importlib``, which does not put this
directory on ``sys.path``; conftest.py is imported before the test modules, so
registering the helper here lets them use a plain import.
"""

import importlib.util
import sys
from pathlib import Path

if "matrix_sample" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("matrix_sample", Path(__file__).with_name("matrix_sample.py"))
    assert _spec is not None
    assert _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["matrix_sample"] = _module
    _spec.loader.exec_module(_module)
