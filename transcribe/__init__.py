"""transcribe: read multi-digit house numbers, know when unsure, refer those to a person.

Follows Goodfellow et al. 2014, "Multi-digit Number Recognition from Street View Imagery
using Deep Convolutional Neural Networks", and the Practical Methodology chapter of the
Deep Learning book. Importing the package has no side effects and does not import torch.
"""

__version__ = "0.1.0"
