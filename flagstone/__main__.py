import sys

from flagstone.cli import main

sys.exit(main())
