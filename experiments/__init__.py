"""The paper's experiments: the protocol (time-boxed training and the one-command paper run), the runner and the
report. Not installed with the package: run from a checkout."""
