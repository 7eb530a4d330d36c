"""``python -m clipsearch``: the same command line as the ``clipsearch`` script."""

from clipsearch.cli import main

if __name__ == "__main__":
    main(prog_name="clipsearch")
