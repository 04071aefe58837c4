"""Parts named in a config as ``"package.module:name"``, imported wherever the model is built."""

from __future__ import annotations

import importlib


def import_named(spec: str, field: str):
    """The object ``spec`` (``"package.module:name"``) names, for the config field ``field``.

    Raises ValueError naming the field, the module and the fix when the module cannot be imported or lacks
    the name: the module must be importable (installed, or on ``PYTHONPATH``) in every process that builds
    the model (train, evaluate, predict, the workers of a slide cohort).
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{field}={spec!r} must look like 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{field}={spec!r}: cannot import module {module_name!r} ({error}); it must be importable "
            "(installed, or on PYTHONPATH) wherever the model is built: train, evaluate, predict and the "
            "slide workers"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{field}={spec!r}: module {module_name!r} has no {attr!r}") from None
