"""``python -m eitp_kernels.bench``: the same as the ``eitp-bench`` command."""
import sys

from eitp_kernels.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
