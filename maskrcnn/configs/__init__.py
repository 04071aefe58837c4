"""The presets: one Python file each, whose ``get_config()`` returns a :class:`maskrcnn.config.Config`.

Load one by name with ``maskrcnn.config.load_config("fast")`` (or ``--config fast``); a variant of your
own is a file anywhere, passed by path (``--config my_config.py``), deriving from a preset in a few lines.
"""
