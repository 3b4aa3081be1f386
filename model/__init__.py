"""AlexNet definitions, ImageNet labels and checkpoint I/O."""
