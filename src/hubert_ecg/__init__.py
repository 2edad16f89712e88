"""HuBERT-ECG: a self-supervised foundation model for 12-lead ECGs."""

__version__ = "0.1.0"
