"""tfads: CTR/CVR prediction for online advertising on TensorFlow (Keras 2 line).

tensorflow-recommenders refuses Keras 3, so the project runs on ``tf_keras``: the
environment variable below must be set before anything imports TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
