"""imgcls: a Hydra + PyTorch Lightning template for image classification."""

__version__ = "0.1.0"
