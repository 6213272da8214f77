import sys

from p3m.cli import main

if __name__ == "__main__":
    sys.exit(main())
