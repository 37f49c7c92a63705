"""acc: the AutoCompress compiler (ONNX in, smaller ONNX and a TVM library out)."""

__version__ = "0.1.0"
