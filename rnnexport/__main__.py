"""``python -m rnnexport``: the same command line as the ``rnnexport`` console script."""

from rnnexport.cli import main

if __name__ == "__main__":
    main()
