"""Front ends: Keras and ONNX models into the tapeout IR."""
