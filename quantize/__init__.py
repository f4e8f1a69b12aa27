"""MXFP4 quantization: encoder, checkpoint conversion and error measurement."""
