"""ONNX back end."""
