"""Graph rewrites, one file each (the ONNX rewrites before quantization and the Relax rewrites before partitioning)."""
