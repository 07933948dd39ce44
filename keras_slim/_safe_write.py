"""Write a file atomically, with the permissions a user expects.

- The bytes go to a temporary file in the target's folder, which is then
  renamed over the target: a failure never leaves a partial file and
  never touches an existing one.
- The new file gets the mode of the file it replaces, or `0o666` minus
  the umask (as `open(path, "w")` would), not `mkstemp`'s 0600.
- A symlink is written through: its target gets the new bytes and the
  link stays a link (as `cp` and editors do).
- `check_writable` creates and removes a probe file in the folder, so an
  unwritable folder is refused before a long conversion, not after.
"""

import contextlib
import os
import stat
import tempfile


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # the portable way: set it and put it back
    os.umask(mask)
    return mask


def resolve(filepath):
    """The path to write for `filepath`: a symlink's final target."""
    return (
        os.path.realpath(filepath) if os.path.islink(filepath) else (filepath)
    )


def check_writable(filepath, name="filepath"):
    """Raise `ValueError` unless a file can be created beside `filepath`."""
    target = resolve(filepath)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise ValueError(
            f"The folder of `{name}` does not exist: {folder!r}. Create it "
            f"first. Received: {name}={filepath!r}"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".keras_slim-", dir=folder)
    except OSError as e:
        raise ValueError(
            f"Cannot write to the folder of `{name}` ({folder!r}): "
            f"{e.strerror or e}. Choose a writable folder. "
            f"Received: {name}={filepath!r}"
        ) from None
    os.close(fd)
    os.remove(probe)


def write(filepath, data):
    """Write `data` to `filepath` atomically (see the module docstring)."""
    target = resolve(filepath)
    folder = os.path.dirname(os.path.abspath(target))
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=".keras_slim-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
