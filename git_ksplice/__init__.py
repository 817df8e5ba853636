"""git-ksplice: rebootless kernel updates built from git history."""

__version__ = "0.1.0"
