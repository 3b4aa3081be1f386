"""Export to ONNX and TensorRT, and INT8 quantization; each step a script: python export/NAME.py."""
