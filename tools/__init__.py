"""Host-side tools for edged: demo data export and model training (not installed on the device).

TensorFlow is imported lazily, inside the functions that need it, so that importing these
modules (for type checking, linting or the tests) never requires it.
"""
