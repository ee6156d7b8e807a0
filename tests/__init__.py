"""The test suite. A package so that ``tests.support`` is importable from the tests, the
benchmarks and the end-to-end suite alike."""
