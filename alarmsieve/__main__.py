"""``python -m alarmsieve``."""

from alarmsieve.cli import main

main()
