"""tensorflow-datasets builders, each a folder in tfds' layout (``tfds build maskrcnn/datasets/pannuke``).

The library does not import them: the ``tfds`` command, :func:`maskrcnn.pannuke.builder_class` (for the
demo) and the builder tests do.
"""
