"""The benchmark runner behind ``eitp-bench``.

    harness.py   timing (CPU perf_counter / CUDA events), copy bandwidth,
                 peak memory of one call, torch.compile of a reference
    cases.py     Case, the suite registry, and how to add a suite
    suite_*.py   one suite per op: the benchmarked shapes and dtypes
    runner.py    a case on every backend -> table rows
    cli.py       the command line, header, table and JSON

Nothing is imported or measured until the CLI (or a benchmark) runs.
"""
