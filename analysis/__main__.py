"""`python -m analysis report|leaderboard|compare ...` without the rest of flowarena."""

import sys

from analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
