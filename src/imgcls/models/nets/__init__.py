"""Plain ``nn.Module`` networks, each built by ``(in_channels, num_classes, image_size)``."""
