"""fastmtl's benchmark suite (``pytest bench/``), its report tool (``python -m bench.report``: ``benchmarks``
reads the JSON, ``tables`` / ``plots`` / ``render`` / ``readme`` write it) and the GPU suite
(``python -m bench.gpu_suite``: ``suite_runner`` runs the steps of ``suite_steps``, ``goals`` judges them)."""
