"""TFLite back end: fp32, fp16, dynamic-range and (with the quantize pass) integer variants."""
