"""The ``changedet`` command line. Nothing in the package imports this sub-package."""
