"""Datasets (sources) and tf.data pipelines with augmentation. Knows nothing of models."""
