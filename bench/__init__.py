"""fastmtl's benchmark suite (``pytest bench/``) and its report tool (``python -m bench.report``)."""
