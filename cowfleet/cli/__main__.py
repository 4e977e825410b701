import sys

from cowfleet.cli import main

sys.exit(main())
