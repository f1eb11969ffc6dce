"""``tfads serve``: the embedded TF-Serving-compatible model server, with tensorflow_model_server's flags."""

from __future__ import annotations

import argparse

from serving.server import flags
from serving.server.main import serve_until_stopped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return serve_until_stopped(args)
