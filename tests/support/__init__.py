"""Fixtures shared by the tests and the benchmarks; no part of the installed packages.

* :mod:`.photos`: scikit-learn's two sample photos (real RGB images that ship
  with scikit-learn, so nothing downloads) and random crops of them;
* :mod:`.weights`: realistic random weights, made the way the official
  reference checkpoints were (``docs/semantics.md`` section 7), for any variant;
* :mod:`.detections`: an exported detector's detections as LiteRT gives them;
* :mod:`.sweep`: int8 export of many variants checked in one LiteRT process;
* :mod:`.test_case`: the shared checks of custom layers and models.

The tests import it as ``support`` (``tests/`` is on ``sys.path`` under pytest),
the benchmark scripts as ``tests.support`` (they put the repository root on
``sys.path``); the modules import each other relatively, so both work.
"""
