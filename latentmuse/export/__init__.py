"""PyTorch -> ONNX: one declarative spec per graph, a generic exporter, validation against PyTorch."""
