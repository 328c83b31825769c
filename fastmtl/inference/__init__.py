"""Inference: the precision paths (torch, ONNX Runtime, OpenVINO), their measurement and agreement checks, the
traced and exported forms of a checkpoint, and ``optimize_for_inference``."""
