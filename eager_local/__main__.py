"""`python -m eager_local` is the `eager-local` command."""

from .cli import main

main()
