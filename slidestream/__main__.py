"""`python -m slidestream` is the same as the `slidestream` command."""

from slidestream.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    main()
