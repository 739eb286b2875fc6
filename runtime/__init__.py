"""What the converter, the trainer's evaluation and the server all need to run a model: onnxruntime
sessions, the model card in ONNX metadata, tensor dtypes, TensorRT engine stamps. It imports only
the contract (:mod:`cxr.client.contract`)."""
