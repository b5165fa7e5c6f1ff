"""Plain ``nn.Module`` networks, each sized by (in_channels, num_classes, image_size)."""
