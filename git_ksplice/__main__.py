"""`python -m git_ksplice` runs the same entry point as `git ksplice`."""
import sys

from git_ksplice.cli import main

sys.exit(main())
