"""`python -m skipbench` runs the command-line interface."""

from .cli import entry

entry()
