"""Data: the Example schema, the embedded synthetic dataset, real-format sources, captions."""
