"""Inference: a request resolved once into a frozen path and built once, the runtimes that run it, and the traced and
exported forms of a checkpoint.

- :mod:`.path`: :class:`~.path.Request` (checked against :mod:`fastmtl.options` when made), the frozen
  :class:`~.path.InferencePath`, what a path needs to run here, and the job's :class:`~.path.Sample` of images;
- :mod:`.resolve`: :func:`~.resolve.resolve`, the one place a request becomes a path (``auto`` measured there, by
  :mod:`.precision`); :mod:`.build`: :func:`~.build.build`, the one place a path becomes a runnable module;
- the runtimes: :mod:`.optimize` (``optimize_for_inference``: torch's float paths), :mod:`.torch_paths` (torchao's
  int8, fixed-batch wrappers), :mod:`.onnxrt` (ONNX Runtime), :mod:`.openvino_rt` (OpenVINO), and
  :mod:`.agreement`, how closely one path follows fp32;
- :mod:`.traced` and :mod:`.export`: the checkpoint as exports trace it, and ``fastmtl export``.
"""
