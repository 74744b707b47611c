"""``python -m iovalab``: the command line (:mod:`iovalab.cli`)."""

import sys

from iovalab.cli import main

if __name__ == "__main__":
    sys.exit(main())
