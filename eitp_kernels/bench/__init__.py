"""The benchmark runner behind ``eitp-bench``.

    harness.py   timing (CPU perf_counter / CUDA events), copy bandwidth,
                 peak memory of one call, torch.compile of a reference
    cases.py     Case, the suite registry, and how to add a suite
    suite_*.py   one suite per op: the benchmarked shapes and dtypes
    peers.py     the other libraries (and formulations) timed beside ours,
                 with their conventions and agreement checks
    runner.py    a case on every backend and alternative -> table rows
    report.py    header, legend, table, summary (targets), JSON, plot
    cli.py       the command line and the files in bench-results/

Nothing is imported or measured until the CLI (or a benchmark) runs.
"""
