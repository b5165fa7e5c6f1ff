"""scikit-learn's bundled handwritten digits: a real, embedded dataset that needs no network."""

import torch
import torch.nn.functional as F

from imgcls.data.base import ImageDataModule, Split


class DigitsDataModule(ImageDataModule):
    """1,797 8x8 digits upscaled to 1x28x28 (MNIST's layout); a fixed stratified 20% test split."""

    all_class_names = tuple(str(d) for d in range(10))
    default_mean, default_std = (0.1557,), (0.2773,)

    def __init__(self, val_size: float = 0.15, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)

    def load_split(self, split: str) -> Split:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
        # MNIST's layout: the digit fills a 20x20 box centred in a 28x28 frame
        images = F.pad(F.interpolate(small, size=(20, 20), mode="bilinear"), (4, 4, 4, 4))
        labels = torch.from_numpy(digits.target).long()
        parts = train_test_split(range(len(labels)), test_size=0.2, stratify=labels, random_state=0)
        idx = torch.tensor(parts[split == "test"])
        return images[idx].round().clamp(0, 255).to(torch.uint8), labels[idx]
