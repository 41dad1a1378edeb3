"""What every command line of the project shares: bad flags get one line, not argparse's usage block; output
folders checked before any work; SIGTERM handled as Ctrl-C."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (argparse's own message and where help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class Verbatim(str):
    """Help text whose line breaks are kept (the examples): the help formatter reflows any other text."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows every flag's default unless it is empty ("" or no items: the help text says what that means), and
    prints Verbatim text as written."""

    def _get_help_string(self, action):
        empty = action.default is None or action.default is argparse.SUPPRESS or action.default in ("", ())
        if action.help and "%(default)" not in action.help and not empty:
            return action.help + " (default: %(default)s)"
        return action.help

    def _fill_text(self, text, width, indent):
        if isinstance(text, Verbatim):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


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


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only the main thread may set handlers


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (`kill`, a batch scheduler's time limit, a closing session) acts as Ctrl-C does: as a SIGINT to
    whatever handles that (Ray Tune: the first stops the sweep and saves its state, a second stops at once). It
    replaces ray.init's handler, which tore the local Ray down mid-trial (C++ stack dumps, exit 134). Both
    handlers come back after: Tune leaves its SIGINT handler installed, which would swallow a later Ctrl-C."""
    if not _in_main_thread():
        yield
        return
    sigint = signal.getsignal(signal.SIGINT)
    sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        for signum, handler in ((signal.SIGINT, sigint), (signal.SIGTERM, sigterm)):
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, handler)


@contextlib.contextmanager
def ignoring_interrupts():
    """Ctrl-C and SIGTERM ignored for a moment of cleanup that must not be cut short."""
    if not _in_main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)
