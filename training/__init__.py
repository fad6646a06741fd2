"""Training: TFDS input pipelines, official recipes and a resumable Keras training loop."""
