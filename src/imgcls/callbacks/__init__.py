"""Lightning callbacks of imgcls (plots, augmentation grid), enabled in configs/callbacks."""
