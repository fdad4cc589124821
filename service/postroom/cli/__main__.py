"""`python -m postroom.cli`: the same as the `postroom` command."""

from . import main

main()
