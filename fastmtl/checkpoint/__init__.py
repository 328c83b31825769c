"""Checkpoints below the engine: the file format (``store``), the metadata readers (``meta``), the run folder's
checkpoint sets (``sets``) and its layout and lock (``rundir.RunDir``). The engine, inference, the command line and
``fastmtl.load_model`` read and write through here."""
