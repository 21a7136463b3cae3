"""Bias reward models: train, distill, export to ONNX, score."""
