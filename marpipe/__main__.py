import sys

from marpipe.cli import main

sys.exit(main())
