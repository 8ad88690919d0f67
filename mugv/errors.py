"""The errors a user causes and can fix, and how the `mugv` command reports them.

Every such failure is a `MugvError` (or a subclass: `ConfigError`, `GenerationError`, ...) whose
message names the file, key or value at fault. `mugv.cli.main` prints it as one line on stderr,
`mugv: error: MESSAGE`, and exits 2; `mugv --debug` shows the traceback instead. An `OSError`
(a missing or unreadable path) and an unreadable safetensors file are reported the same way.

Any other exception (a `TypeError` inside the library, say) is a bug in mugv, not bad input: it
keeps Python's full traceback, which is what a bug report needs, rather than one line that would
ask for a rerun (costly after hours of training) to see where it came from.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

# The exit status of a reported user error, as argparse uses for its own `mugv: error:` lines.
USER_ERROR_EXIT = 2


class MugvError(Exception):
    """Bad input the user can fix; the message names the file, key or value."""


class ConfigError(MugvError, ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class UnreadableFileError(MugvError, ValueError):
    """A file exists but does not hold what it should (corrupt, truncated or another format)."""


@contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Name `path` when the safetensors or `torch.load` call inside cannot parse it, e.g.
    `with reading(path, "DiT weights"): state = load_file(path)`. Wrap only the read itself:
    `torch.load` reports a corrupt archive as a RuntimeError."""
    try:
        yield
    except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        detail = one_line(str(exc)) or type(exc).__name__
        raise UnreadableFileError(f"{path}: cannot read {what} ({detail})") from exc


def one_line(message: str) -> str:
    """The non-blank lines of `message` joined with '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def user_error_message(exc: BaseException) -> str | None:
    """The one line to show for `exc` when it is a user error; None for a bug."""
    if isinstance(exc, MugvError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        if exc.filename is not None:  # raised by the OS: "[Errno 2] No such file or directory: 'x'"
            target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
            return f"{exc.strerror or type(exc).__name__}: {target}"
        return one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, SafetensorError):  # a read that no `reading(...)` wraps
        return f"cannot read a safetensors file ({one_line(str(exc))}); rerun with `mugv --debug` to see which"
    return None
