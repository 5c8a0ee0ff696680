"""vqaserve: answers questions about images with a vision-language model, safely and fast."""

__version__ = "0.1.0"
