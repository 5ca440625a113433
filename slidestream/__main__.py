"""`python -m slidestream` is the same as the `slidestream` command."""

from slidestream.cli import main

main()
