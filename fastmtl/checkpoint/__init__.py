"""Checkpoints below the engine: the file format (``store``), the metadata readers (``meta``) and the run folder's
checkpoint sets (``sets``). The engine, inference and ``fastmtl.load_model`` read and write through here."""
