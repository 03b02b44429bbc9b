"""`python evaluate.py RUN [--split val|test|PATH] ...` = `transcribe evaluate RUN ...`."""

import argparse
import sys

from transcribe.cli import add_evaluate_arguments
from transcribe.evaluation import run_evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="evaluate.py",
                                     description="write a predictions file and the accuracy-vs-coverage report")
    add_evaluate_arguments(parser)
    sys.exit(run_evaluate(parser.parse_args()))
