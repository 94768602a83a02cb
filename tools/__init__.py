"""Host-side tools for edged (not installed on devices): ``python -m tools <command>``.

``train`` (tools/train/), ``bundle`` (tools/bundle.py), ``keygen`` (tools/keygen.py), ``push``
(tools/push.py), and ``python -m tools.demo_data`` for the digits demo's data.

TensorFlow, Keras and scikit-learn are imported lazily, inside the functions that need them,
so importing these modules (for type checking, linting, the tests or the bundle and keygen
commands) never requires them.
"""
