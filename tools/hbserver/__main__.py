import sys

from tools.hbserver.cli import main

sys.exit(main())
