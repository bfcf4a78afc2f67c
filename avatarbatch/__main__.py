"""`python -m avatarbatch` runs the command line."""

from avatarbatch.cli import main

main()
