"""latentmuse: production lip-sync (MuseTalk 1.5 front end + LatentSync UNet3D) with ONNX/TensorRT engines."""

__version__ = "0.1.0"
