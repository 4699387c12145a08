"""``python -m flagstone.cli``: the same as ``flagstone``."""
import sys

from flagstone.cli import main

sys.exit(main())
