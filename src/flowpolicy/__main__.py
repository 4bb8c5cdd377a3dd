import sys

from flowpolicy.cli import main

sys.exit(main())
