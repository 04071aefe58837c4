"""A from-scratch Keras 3 Mask R-CNN on JAX for nucleus instance segmentation in H&E histology.

Importing the package selects the JAX backend for Keras unless the user already chose one through
the ``KERAS_BACKEND`` environment variable.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"
