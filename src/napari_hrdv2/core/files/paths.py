"""Paths given by the user: names the file system cannot hold give a clear error, never a raw ``OSError``.

``Path.exists()`` / ``is_file()`` / ``is_dir()`` raise ``OSError(ENAMETOOLONG)`` for a name longer than
the file system allows (255 bytes per name, 4096 per path on Linux) instead of answering False;
:func:`check_path` catches such paths where they enter (images, labels, models, backbones, outputs).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import HRDv2Error, InputError

#: Longest file or folder name most file systems accept (bytes).
NAME_MAX = 255
#: Longest path Linux accepts (bytes).
PATH_MAX = 4096


def _shortened(text: str, keep: int = 60) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep // 2 :]}"


def check_path(path: str | Path, what: str = "path", *, error: type[HRDv2Error] = InputError) -> Path:
    """``path`` as a Path, or ``error`` (default :class:`InputError`) if no file system can hold it.

    Parameters
    ----------
    path : a file or folder name given by the user
    what : what it is, for the message (e.g. ``"image"``, ``"model file"``)
    error : the exception class raised

    Raises
    ------
    error
        A name in ``path`` is longer than :data:`NAME_MAX` bytes, the whole path longer than
        :data:`PATH_MAX`, or it contains a NUL character.
    """
    path = Path(path)
    text = str(path)
    subject = "The path" if what == "path" else f"The {what} path"  # not "The path path" by default
    if "\0" in text:
        raise error(f"{subject} {_shortened(text)!r} contains a NUL character; no file can have that name.")
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise error(
                f"{subject} '{_shortened(text)}' has a name of {size} bytes ('{_shortened(part, 20)}'); "
                f"file systems allow at most {NAME_MAX} bytes per file or folder name. Use a shorter name."
            )
    size = len(os.fsencode(text))
    if size > PATH_MAX:
        raise error(f"{subject} '{_shortened(text)}' is {size} bytes long; paths may have at most {PATH_MAX} bytes.")
    return path


def check_input_file(
    path: str | Path, what: str = "file", *, folder: bool = False, error: type[HRDv2Error] = InputError
) -> Path:
    """``path`` as a Path, if it names an existing regular file (or, with ``folder``, a folder) that can be read.

    Parameters
    ----------
    path : a file given by the user as an input (image, labels, model, basis, backbone weights)
    what : what it is, for the message (e.g. ``"Image"``, ``"Model file"``)
    folder : a folder is accepted too (a Zarr image, a backbone folder)
    error : the exception class raised

    Raises
    ------
    error
        A name no file system can hold (:func:`check_path`), a path that does not exist, a symlink loop, a
        folder (unless ``folder``), or something that is not a regular file: a FIFO (reading it would wait
        forever), a socket or a device.
    """
    path = check_path(path, what.lower(), error=error)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(
                f"{what} '{path}' is a symbolic link to a missing file; fix the link or give the file."
            ) from None
        raise error(f"{what} '{path}' does not exist.") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise error(
                f"{what} '{path}' is a symbolic link loop (it points back to itself); give the file it should name."
            ) from None
        raise error(f"Cannot read {what.lower()} '{path}': {err.strerror or err}.") from None
    if stat.S_ISDIR(mode):
        if folder:
            return path
        raise error(f"{what} '{path}' is a folder, not a file; give a file.")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise error(f"{what} '{path}' is {kind}, not a regular file; save the data to a file and give that.")
    return path
