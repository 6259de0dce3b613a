"""fairal: fairness-aware active learning for 3D brain MRI segmentation."""

__version__ = "0.1.0"
