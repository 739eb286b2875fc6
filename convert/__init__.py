"""PyTorch -> ONNX -> INT8 / FP16 variants and TensorRT engines, checked before publication."""
