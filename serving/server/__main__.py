"""``python -m serving.server``: run the embedded model server with tensorflow_model_server flags."""

import logging
import sys

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from serving.server import flags
from serving.server.main import serve_until_stopped

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(serve_until_stopped(flags.parse_flags(sys.argv[1:])))
