"""What every command line of the project shares: bad flags get one line, not argparse's usage block."""
from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (argparse's own message and where help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
