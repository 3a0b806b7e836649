"""``python -m rnnexport``: the same command line as the ``rnnexport`` script."""

from rnnexport.cli import main

main()
