"""``python -m experiments ...``: the experiments' command line (the same as ``python experiments/run.py ...``)."""

from experiments.cli import main

main(prog="python -m experiments")
