"""The results store (runs, curves and diagnostics as parquet, written atomically) and its
exports to TensorBoard, MLflow and Weights & Biases."""
