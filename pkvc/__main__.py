"""Allow `python -m pkvc`."""

from pkvc.cli import main

main()
