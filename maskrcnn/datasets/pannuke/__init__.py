"""The PanNuke dataset for tensorflow-datasets (importing this registers ``pannuke``)."""

from .pannuke_dataset_builder import Builder

__all__ = ["Builder"]
