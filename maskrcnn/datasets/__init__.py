"""tensorflow-datasets builders, each a folder in tfds' layout (``tfds build maskrcnn/datasets/pannuke``).

The library below them never imports them: the ``tfds`` command, ``maskrcnn demo`` (the command line,
above the library) and the builder tests do (``from maskrcnn.datasets.pannuke import Builder``).
"""
