"""Ray Train pipelines (``pipelines/train.py``)."""
