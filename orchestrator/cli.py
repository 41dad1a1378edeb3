"""What every command line of the project shares: bad flags get one line, not argparse's usage block; output
folders checked before any work."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (argparse's own message and where help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def directory_problem(path: str | os.PathLike, writable: bool = True) -> str | None:
    """What keeps `path` from being a directory (that this process can write into, creating it and its missing
    parents if need be), in a few words; None when nothing does. Creates and writes nothing."""
    p = Path(path).expanduser().absolute()
    existing = p if p.exists() else next(a for a in p.parents if a.exists())  # the root always exists
    where = "" if existing == p else f"cannot be created: {existing} "
    if not existing.is_dir():
        return f"{where}is not a directory"
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        return f"{where}is not writable"
    return None
