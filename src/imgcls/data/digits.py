"""scikit-learn's bundled handwritten digits: a real, embedded dataset that needs no network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgcls.data.base import ImageDataModule, Split

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0  # fixed: the test set is the same for every run and every seed


class DigitsDataModule(ImageDataModule):
    """1,797 8x8 digits (UCI), upscaled to 1x28x28 so every MNIST model runs on them unchanged."""

    all_class_names = tuple(str(d) for d in range(10))
    default_mean, default_std = (0.1557,), (0.2773,)

    def __init__(self, val_size: float = 0.15, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)

    @staticmethod
    def _load_all() -> Split:
        from sklearn.datasets import load_digits

        digits = load_digits()
        small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
        # MNIST's layout: the digit fills a 20x20 box centred in a 28x28 frame
        images = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
        images = F.pad(images, (4, 4, 4, 4))
        return images.round().clamp(0, 255).to(torch.uint8), torch.from_numpy(digits.target).long()

    def load_split(self, split: str) -> Split:
        from sklearn.model_selection import train_test_split

        images, labels = self._load_all()
        train_idx, test_idx = train_test_split(
            range(len(labels)),
            test_size=TEST_FRACTION,
            stratify=labels.numpy(),
            random_state=TEST_SPLIT_SEED,
        )
        idx = torch.tensor(train_idx if split == "train" else test_idx)
        return images[idx], labels[idx]
