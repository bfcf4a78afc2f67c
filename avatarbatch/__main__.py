"""`python -m avatarbatch` runs the command line."""

from avatarbatch.cli.commands import main

main()
