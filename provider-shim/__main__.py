import sys

from cowfleet.provider.main import main

sys.exit(main())
