"""Plain ``nn.Module`` networks, each sized by (in_channels, num_classes, image_size).

The model zoo (config name -> class, trainable parameters at 1x28x28 with 10 classes):

- ``tinynet``     -> :class:`~imgcls.models.nets.tinynet.TinyNet`, 13,818
- ``mlp``         -> :class:`~imgcls.models.nets.mlp.MLP`, 535,818 (hidden 512, 256)
- ``convnet``     -> :class:`~imgcls.models.nets.convnet.ConvNet`, 593,200
- ``resnet18``    -> torchvision's, via :func:`~imgcls.models.nets.pretrained.torchvision_net`,
  11,172,810 (small-input stem)
- ``alexnet_lrn`` -> :class:`~imgcls.models.nets.alexnet.AlexNetLRN`, 21,598,922
- ``alexnet``     -> :class:`~imgcls.models.nets.alexnet.AlexNet`, 93,819,402

Shared building blocks and size arithmetic live in :mod:`imgcls.models.nets.blocks`. Every net
runs on every image size at or above its minimum (a ``UserError`` names it below).
"""
