"""Errors a user can fix, one type per kind of mistake.

Every error here derives from :class:`PhysforecastError`; the ``physforecast`` command
prints such an error as one ``physforecast: error: ...`` line (the traceback only with
``--debug`` or ``PHYSFORECAST_DEBUG=1``). Each also derives from the built-in type a
Python caller would expect (``ValueError``, ``RuntimeError``, ``FileNotFoundError``), so
``except ValueError`` keeps working. Every message names the problem and what to do;
``docs/troubleshooting.md`` lists them all.

========================  ==================================================================
error                     the mistake
========================  ==================================================================
ConfigError               a config key or value is not valid (typo, type, range, YAML)
OptionError               an option a backbone, dataset or reader does not take
OutputPathError           an output path the package cannot write (suffix, a file in the way)
DeviceError               a device that is not there (``train.device=cuda`` without a GPU)
DataFormatError           a file lacks the variables, dims or layout that were expected
DataIntegrityError        a file's values are missing or unreadable (chunks, frames)
WindowsTooShortError      a split has fewer time steps than one window needs
RunDirInUseError          another process writes the run directory (its lock is held)
RunDirNotEmptyError       a new run into a directory that already holds one
ResumeError               a run that cannot be resumed as asked
CheckpointError           a checkpoint file that cannot be read (corrupt, empty, truncated)
UnsafeCheckpointError     a checkpoint refused because it would run code when loaded
DistributedRunError       a process of a distributed run died or stopped answering
========================  ==================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "PhysforecastError",
    "ConfigError",
    "OptionError",
    "OutputPathError",
    "DeviceError",
    "DataFormatError",
    "DataIntegrityError",
    "WindowsTooShortError",
    "RunDirInUseError",
    "RunDirNotEmptyError",
    "ResumeError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "DistributedRunError",
    "check_options",
]


class PhysforecastError(Exception):
    """Base class of the errors that name a user's mistake and what to do about it."""


class ConfigError(PhysforecastError, ValueError):
    """A configuration key or value is not valid."""


class OptionError(ConfigError):
    """A keyword option that a backbone, dataset generator or file reader does not take."""


class OutputPathError(ConfigError):
    """An output path that cannot be written (an unknown suffix, a file where a directory
    belongs)."""


class DeviceError(ConfigError):
    """The requested device does not exist on this machine."""


class DataFormatError(PhysforecastError, ValueError):
    """A file or dataset lacks the variables, dims, layout or values that were expected."""


class DataIntegrityError(DataFormatError):
    """A file's values are missing or unreadable: an absent or corrupt chunk, a frame of
    NaN where the field is valid."""


class WindowsTooShortError(ConfigError):
    """A split has fewer time steps than ``in_steps + out_steps``."""


class RunDirInUseError(PhysforecastError, RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirNotEmptyError(PhysforecastError, FileExistsError):
    """A new run was pointed at a directory that already holds files."""


class ResumeError(PhysforecastError, ValueError):
    """A run cannot be resumed as asked (nothing to resume, or a changed model)."""


class CheckpointError(PhysforecastError, RuntimeError):
    """A checkpoint file is corrupt, empty or truncated."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects that would execute code when unpickled; it is refused."""


class DistributedRunError(PhysforecastError, RuntimeError):
    """A process of a distributed run died or stopped answering."""


def check_options(
    owner: str,
    given: Iterable[str],
    valid: Iterable[str],
    *,
    key: str | None = None,
) -> None:
    """Raise :class:`OptionError` for the first of ``given`` that is not in ``valid``.

    Parameters
    ----------
    owner : str
        What takes the options, for the message (``"dataset 'ns2d'"``, ``"backbone 'fno'"``).
    given, valid : iterable of str
        The option names passed, and those accepted.
    key : str, optional
        The config key the options come from (``data.options``), named in the message.

    Examples
    --------
    >>> check_options("backbone 'fno'", ["hiden"], ["hidden", "modes"], key="model.options")
    Traceback (most recent call last):
    ...
    physforecast.errors.OptionError: backbone 'fno' does not take option 'hiden' (model.options.hiden). Did you mean 'hidden'? Valid options: hidden, modes
    """
    valid = sorted(str(v) for v in valid)
    for name in given:
        if name in valid:
            continue
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f" ({key}.{name})" if key else ""
        raise OptionError(
            f"{owner} does not take option {name!r}{where}.{hint} "
            f"Valid options: {', '.join(valid) or 'none'}"
        )
