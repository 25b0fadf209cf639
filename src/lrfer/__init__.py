"""lrfer: a training and evaluation framework for low-resolution facial expression recognition."""

__version__ = "0.1.0"
