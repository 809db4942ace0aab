"""``python -m xelm_cli``: the same as the ``xelm`` command."""

from xelm_cli.cli import main

if __name__ == "__main__":
    main()
