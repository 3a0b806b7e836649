"""The tests mirror the package: the test of ``rnnexport/graph/tidy.py`` is ``tests/graph/test_tidy.py``,
of a top-level module ``tests/test_<module>.py``. ``scenarios/`` holds whole-tool runs that are no one
module's (hostile artifacts, faults, the model zoos, the README, a target install, the torch range,
JavaScript, CUDA); ``zoo/`` and ``userzoo/`` are user-style models the tests build. Shared functions are
in ``helpers.py``, shared fixtures in ``conftest.py``; ``test_layout.py`` checks the package's rules.
"""
