"""Quantization and export: int8 PTQ, Keras 3 QAT, TFLite/LiteRT export and Edge TPU checks."""
