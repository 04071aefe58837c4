"""The model tests' shared tiny model (built once a test module)."""

import keras
import pytest

from maskrcnn.config import load_config
from maskrcnn.model import build_model


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)  # a fixed initialisation: some random ones saturate the classifier
    config = load_config("tiny")
    model = build_model(config.model, config.data.image_size, mini_masks=True)
    return config, model
