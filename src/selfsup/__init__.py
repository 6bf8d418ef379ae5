"""selfsup: self-supervised pretraining of encoders and language models."""

__version__ = "0.1.0"
