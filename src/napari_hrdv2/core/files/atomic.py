"""All-or-nothing output files: every file this package writes goes through here.

A file is written to a hidden temporary name in the folder of its final name
(``.<name>.<host>.<pid>.<random>.part``: its owner is part of its name), flushed to disk (``fsync``), and only then renamed onto the
final name with :func:`os.replace`, which is atomic on POSIX and Windows. So:

- an interrupted or failed write never leaves a file under the final name: a re-run does not
  skip it as "existing", and a reader never loads a truncated or zero-filled result;
- ``overwrite=True`` keeps the previous good file until the new one is complete;
- a full disk is an :class:`~.errors.OutputError` ("No space left ..."), never a ``SIGBUS``:
  nothing is ever written through a memory map (:class:`ArrayStreamWriter` writes blocks with
  ``write``).

Temporary files end in ``.part`` and start with a dot, so folder scans (``IMAGE_SUFFIXES``)
never pick them up. A process killed with ``SIGKILL`` cannot delete its temporary file; the next
write into that folder (once per folder and process, :func:`remove_stale_temporaries`) deletes the
temporaries of this naming scheme whose owner was a process of this computer that no longer runs.
Temporaries of live processes, of other computers (shared folders) and any other file are kept.

Use :func:`check_output_folder` before a long computation to refuse an unwritable folder (or
one without room) before any work is done.

Functions: :func:`atomic_path` (context manager, the building block), :func:`write_bytes`,
:func:`write_text`, :func:`write_json`, :func:`write_npy`, :func:`write_tif`, :func:`write_png`,
:func:`write_safetensors`, :class:`ArrayStreamWriter` (large arrays block by block).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputError
from .paths import check_path

#: Suffix of temporary files (never an image suffix, so scans of a folder ignore them).
PART_SUFFIX = ".part"
#: Margin kept free on top of an estimate of the bytes a run writes.
_ROOM_MARGIN = 1.05


def _host_tag() -> str:
    """This computer's name as it appears in temporary names: letters, digits, ``-`` and ``_``, at most 32."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname() or "host")[:32]
    return host or "host"


#: ``.<name>.<host>.<pid>.<8 hex>.part``: the temporaries :func:`temporary_name` makes (and nothing else).
_TEMPORARY_PATTERN = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]{1,32})\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}\.part$"
)
#: Longest file name most file systems accept (bytes).
_NAME_MAX = 255
_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()


def temporary_name(path: str | Path) -> Path:
    """A fresh hidden temporary path next to ``path``: ``.<name>.<host>.<pid>.<random>.part``.

    The host and process id name the owner, so a later run can tell a temporary left by a killed
    process from one still being written (:func:`remove_stale_temporaries`). A long ``name`` is
    shortened so that the temporary name stays within the file system's 255-byte limit.
    """
    path = Path(path)
    tail = f".{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}"
    name = path.name
    room = _NAME_MAX - 1 - len(tail.encode())
    while len(name.encode()) > room:
        name = name[:-1]
    return path.with_name(f".{name}{tail}")


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this computer (a process we may not signal still runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries in ``folder`` left by killed processes of this computer; returns them.

    Only regular files named as :func:`temporary_name` makes them, whose host is this computer and
    whose process no longer runs, are deleted: temporaries being written by live processes (this
    one included), those of other computers (a shared folder) and every other file are kept.
    Unreadable folders and files that vanish meanwhile are ignored.
    """
    host = _host_tag()
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_PATTERN.match(entry.name)
        if match is None or match["host"] != host:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or not _process_gone(int(match["pid"])):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` for ``folder``, once per process (folders with many writes scan once)."""
    try:
        key = str(folder.resolve())
    except OSError:  # pragma: no cover
        key = str(folder.absolute())
    with _SWEPT_LOCK:
        if key in _SWEPT:
            return
        _SWEPT.add(key)
    remove_stale_temporaries(folder)


def _describe(err: OSError, path: Path) -> str:
    if err.errno == errno.ENOSPC:
        return f"No space left on the device while writing '{path}'"
    if err.errno == errno.EDQUOT:
        return f"Disk quota exceeded while writing '{path}'"
    if err.errno == errno.EROFS:
        return f"'{path.parent}' is on a read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"No permission to write '{path}'"
    return f"Could not write '{path}': {err.strerror or err}"


def output_error(err: OSError, path: str | Path) -> OutputError:
    """An :class:`OutputError` with a one-line message for an ``OSError`` raised while writing ``path``."""
    path = Path(path)
    return OutputError(f"{_describe(err, path)}; nothing was written there (an existing file is unchanged).")


def is_kept(path: str | Path, *, overwrite: bool) -> bool:
    """True when ``path`` exists and may not be replaced (no ``overwrite``): the one overwrite rule.

    A batch skips the inputs whose outputs are kept; a single write refuses them (:func:`check_target`).
    """
    return not overwrite and Path(path).exists()


def check_target(path: str | Path, *, overwrite: bool = False, what: str = "output") -> Path:
    """Refuse a target that is a folder, or that exists without ``overwrite`` (:func:`is_kept`); returns it as a Path."""
    path = check_path(path, what)
    if path.is_dir():
        raise InputError(f"The {what} '{path}' is a folder; give a file name.")
    if is_kept(path, overwrite=overwrite):
        raise InputError(f"'{path}' already exists; pass overwrite=True (--overwrite) to replace it.")
    return path


def check_output_folder(folder: str | Path, needed_bytes: int = 0) -> Path:
    """Check that files can be created in ``folder`` (made if missing) and that it roughly has room.

    Parameters
    ----------
    folder : the folder the outputs go to
    needed_bytes : estimate of the bytes that will be written there (0 = only check it is writable)

    Raises
    ------
    OutputError
        The folder cannot be created or written (read-only, no permission, a file in the way), or
        has less free space than ``needed_bytes`` (plus a 5 % margin).
    """
    folder = check_path(folder, "output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"'{folder}' is a file, not a folder; give a folder for the outputs.") from None
    except OSError as err:
        raise OutputError(f"Cannot create the output folder '{folder}': {err.strerror or err}.") from None
    if not folder.is_dir():
        raise OutputError(f"'{folder}' is a file, not a folder; give a folder for the outputs.")
    _sweep_once(folder)
    probe = temporary_name(folder / "write-test")
    try:  # os.access is not enough (root, read-only mounts, ACLs): try creating a file
        with open(probe, "xb"):
            pass
    except OSError as err:
        raise OutputError(f"Cannot write into '{folder}': {_describe(err, probe).split(';')[0]}.") from None
    finally:
        with suppress(OSError):
            probe.unlink()
    if needed_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < needed_bytes * _ROOM_MARGIN:
            raise OutputError(
                f"Not enough room in '{folder}': the outputs need about {_size(needed_bytes)} but only "
                f"{_size(free)} is free. Free some space or choose another folder."
            )
    return folder


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"  # pragma: no cover


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover (Windows)
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover (some file systems refuse fsync on folders)
        pass
    finally:
        os.close(handle)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (before a rename or a marker says it is complete)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Context manager giving a temporary path to write; on success it becomes ``path``.

    The body writes the complete file to the yielded temporary path (any library, any way).
    On a normal exit it is flushed to disk and renamed onto ``path``; on an exception (or
    ``KeyboardInterrupt``) it is deleted and ``path`` is left as it was.

    Parameters
    ----------
    path : final file name (its folder is created if needed)
    overwrite : bool
        Replace an existing ``path``; otherwise an existing file raises :class:`InputError`
        before anything is written.

    Raises
    ------
    InputError
        ``path`` exists (without ``overwrite``) or is a folder.
    OutputError
        The file could not be written (full disk, read-only folder, no permission...).
    """
    path = check_target(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, path) from err
    _sweep_once(path.parent)
    temporary = temporary_name(path)
    try:
        try:
            yield temporary
            if not temporary.exists():
                raise OutputError(f"Nothing was written for '{path}'.")
            fsync_file(temporary)
            if is_kept(path, overwrite=overwrite):  # appeared meanwhile (another process)
                raise InputError(f"'{path}' already exists; pass overwrite=True (--overwrite) to replace it.")
            os.replace(temporary, path)
        except OSError as err:
            if isinstance(err, OutputError):
                raise
            raise output_error(err, path) from err
    finally:
        with suppress(OSError):
            temporary.unlink()
    _fsync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, overwrite=overwrite) as temporary, open(temporary, "xb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str | Path, data: Any, *, overwrite: bool = False, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically; returns ``path``."""
    return write_text(path, json.dumps(data, indent=indent) + "\n", overwrite=overwrite)


def write_npy(path: str | Path, array: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write one array as ``.npy`` atomically (no pickle); returns ``path``."""
    array = np.asarray(array)
    with atomic_path(path, overwrite=overwrite) as temporary, open(temporary, "xb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def write_tif(path: str | Path, data: Any, *, overwrite: bool = False, **tifffile_options: Any) -> Path:
    """Write ``data`` with :func:`tifffile.imwrite` atomically; ``tifffile_options`` go to ``imwrite``.

    ``data`` may be an array or anything ``imwrite`` accepts (with ``shape``/``dtype`` options).
    """
    import tifffile

    with atomic_path(path, overwrite=overwrite) as temporary:
        tifffile.imwrite(str(temporary), data, **tifffile_options)
    return Path(path)


def write_png(path: str | Path, image: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a (H, W) or (H, W, 3|4) uint8/uint16 image as PNG atomically; returns ``path``."""
    import imageio.v3 as iio

    # Encoded in memory first: a full disk then fails in our own write (an OutputError), never inside imageio's
    # plugin, whose destructor would print a third-party traceback ("Exception ignored in PluginV3.__del__").
    data = iio.imwrite("<bytes>", np.asarray(image), extension=".png")
    return write_bytes(path, data, overwrite=overwrite)


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write numpy ``tensors`` (and string ``metadata``) as one safetensors file atomically."""
    from safetensors.numpy import save

    data = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    return write_bytes(path, data, overwrite=overwrite)


class ArrayStreamWriter:
    """A large array written block by block, in C order, to ``.npy`` or ``.tif``, all-or-nothing.

    Blocks go to a temporary ``.npy`` with ordinary writes (a full disk raises
    :class:`OutputError`; no memory map, so never ``SIGBUS``). :meth:`commit` checks that
    the whole array was written and renames it onto the final name (a ``.tif`` is converted
    from the temporary file first, reading it back page by page); leaving the ``with`` block
    with an exception, or without :meth:`commit`, deletes the temporary file.

    Parameters
    ----------
    path : final file (``.npy``, ``.tif`` or ``.tiff``)
    shape : tuple of int
        Shape of the whole array, e.g. ``(N, C, H, W)``.
    dtype : numpy dtype
    overwrite : bool
        Replace an existing file (only when the new one is complete).

    Examples
    --------
    >>> with ArrayStreamWriter("f.npy", (2, 3), "float32") as out:  # doctest: +SKIP
    ...     out.write(np.zeros((1, 3)))
    ...     out.write(np.ones((1, 3)))
    ...     out.commit()
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: Any, *, overwrite: bool = False):
        self.path = check_target(path, overwrite=overwrite)
        suffix = self.path.suffix.lower()
        if suffix not in (".npy", ".tif", ".tiff"):
            raise InputError(f"Arrays are written as .npy or .tif, not '{self.path.name}'.")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.overwrite = overwrite
        self.total_bytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.written_bytes = 0
        self.committed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _sweep_once(self.path.parent)
            self._staging = temporary_name(self.path)
            self._handle = open(self._staging, "xb")  # noqa: SIM115 (closed in commit/abort)
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            np.lib.format.write_array_header_1_0(self._handle, header)
        except OSError as err:
            self.abort()
            raise output_error(err, self.path) from err

    def __enter__(self) -> ArrayStreamWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.committed:
            self.abort()

    def write(self, block: np.ndarray) -> None:
        """Append the next block (any shape; its elements continue the array in C order)."""
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if self.written_bytes + data.nbytes > self.total_bytes:
            raise ValueError(f"Too much data for an array of shape {self.shape}.")
        try:
            self._handle.write(data.tobytes() if data.nbytes < (1 << 24) else memoryview(data.reshape(-1)))
        except OSError as err:
            self.abort()
            raise output_error(err, self.path) from err
        self.written_bytes += data.nbytes

    def commit(self) -> Path:
        """Finish: the array must be complete; it replaces ``path`` atomically. Returns ``path``."""
        if self.written_bytes != self.total_bytes:
            self.abort()
            raise OutputError(
                f"'{self.path}' was not written: only {self.written_bytes} of {self.total_bytes} bytes were produced."
            )
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            if self.path.suffix.lower() == ".npy":
                with atomic_path(self.path, overwrite=self.overwrite) as temporary:
                    os.replace(self._staging, temporary)
            else:
                staged = np.load(self._staging, mmap_mode="r")  # read-only map of a complete local file
                try:
                    pages = staged.reshape(-1, *self.shape[-2:]) if len(self.shape) > 2 else staged[None]
                    write_tif(
                        self.path,
                        iter(pages),
                        shape=self.shape,
                        dtype=self.dtype,
                        photometric="minisblack",
                        overwrite=self.overwrite,
                    )
                finally:
                    del staged
        except OSError as err:
            self.abort()
            if isinstance(err, OutputError):
                raise
            raise output_error(err, self.path) from err
        except BaseException:
            self.abort()
            raise
        self.committed = True
        with suppress(OSError):
            self._staging.unlink()
        return self.path

    def abort(self) -> None:
        """Delete the temporary file; ``path`` is left as it was."""
        handle = getattr(self, "_handle", None)
        if handle is not None and not handle.closed:
            with suppress(OSError):
                handle.close()
        staging = getattr(self, "_staging", None)
        if staging is not None:
            with suppress(OSError):
                staging.unlink()


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths name one file (same resolved path, or the same inode through a link)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # pragma: no cover (unresolvable paths compare as given)
        return a.absolute() == b.absolute()


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (resolved) is ``folder`` or lies inside it."""
    return path == folder or folder in path.parents


def resolves_to_input(output: str | Path, source: str | Path) -> bool:
    """True when writing ``output`` would replace or alter the input ``source``.

    That is: the same file (same resolved path, a hard link or a symlink to it), ``output`` inside an input
    folder (a file in an OME-Zarr image), or an input inside ``output`` (a Zarr output folder replaced whole).
    """
    if same_file(output, source):
        return True
    out_key, source_key = _resolved(Path(output)), _resolved(Path(source))
    return _inside(out_key, source_key) or _inside(source_key, out_key)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as given
        return path.absolute()


def check_not_an_input(output: str | Path, inputs: Iterable[str | Path], *, option: str = "-o") -> None:
    """Refuse an output path that resolves to one of the inputs, even with overwrite (the input would be destroyed).

    The one rule of every writer (CLI, API, docks): see :func:`resolves_to_input`.

    Raises
    ------
    InputError
        ``output`` is an input, a link to one, inside an input folder (Zarr) or a folder holding an input.
    """
    for source in inputs:
        if resolves_to_input(output, source):
            raise InputError(
                f"{option} '{output}' is the input '{source}' (or inside it, or a link to it); writing there would "
                "destroy it (also with --overwrite). Choose another output file."
            )
