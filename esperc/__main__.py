"""``python -m esperc`` runs the command line."""

from esperc.cli import main

main()
