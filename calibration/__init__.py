"""INT8: calibration data (``data``), ranges and their cache (``ranges``), Q/DQ quantization (``quantize``),
the per-group accuracy budget (``sensitivity``), the whole ONNX INT8 export (``int8``) and the float-vs-INT8
comparison (``compare``)."""
