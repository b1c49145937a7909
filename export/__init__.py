"""ONNX export with ``tinyvim`` custom ops, and validation against PyTorch."""
