"""TensorRT back end: optimized ONNX + plan.json everywhere, model.plan where a GPU and tensorrt are present."""
