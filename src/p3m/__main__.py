import sys

from p3m.cli import main

sys.exit(main())
