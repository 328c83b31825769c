"""The paper's experiments, run from a checkout (not installed with the package), one module per concern:

- ``cli``: the command line (``python experiments/run.py ...``, the form the results record, or
  ``python -m experiments ...``);
- ``table``: the run table (experiments, models, ablation variants, report columns);
- ``row``: one table row trained, time-boxed and resumable, into a result JSON and figures;
- ``paper``: the paper's protocol in one command under a wall-clock budget;
- ``protocol``: its time-boxed training and bring-back folder; ``evaluation``: the ``--eval`` folders and the
  selected model's evaluation; ``projection``: FLOPs, throughput and the projected time of 150 epochs;
- ``report``: docs/RESULTS.md's tables from the result JSONs.
"""
