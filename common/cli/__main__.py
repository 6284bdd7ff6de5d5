"""`python -m p2pm.common.cli`: the `p2pm` command without its console script."""

from . import main

main()
