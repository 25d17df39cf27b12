"""Errors that reach a person as one line: what was wrong, where, and how to fix it."""

import os

# Exit codes from sysexits.h, so systemd and shell scripts can tell failures apart.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78


class VoicebotError(Exception):
    """A failure with a one-line explanation for the user; never shown as a traceback."""

    exit_code = EX_SOFTWARE


class ConfigError(VoicebotError):
    """The configuration file or an override is invalid."""

    exit_code = EX_CONFIG


class ModelNotFoundError(VoicebotError):
    """A model file the configuration asks for is not on disk."""

    exit_code = EX_NOINPUT


class ModelLoadError(VoicebotError):
    """A model file exists but cannot be loaded (corrupt, truncated or the wrong kind)."""

    exit_code = EX_DATAERR


class AudioInputError(VoicebotError):
    """An input audio file is missing, unreadable or not audio."""

    exit_code = EX_NOINPUT


class AudioDeviceError(VoicebotError):
    """A sound device is missing, busy, or vanished while in use."""

    exit_code = EX_UNAVAILABLE


class RequestTooLargeError(VoicebotError):
    """A request does not fit in the LLM's context window."""

    exit_code = EX_DATAERR


class RemoteEngineError(VoicebotError):
    """An engine on another machine could not be reached, failed, or was too slow."""


class DownloadError(VoicebotError):
    """A model file could not be downloaded (network, server, or the server sent something else)."""

    exit_code = EX_UNAVAILABLE


class ChecksumError(VoicebotError):
    """A downloaded model file is complete but its SHA-256 is not the published one."""

    exit_code = EX_DATAERR


class UnverifiableModelError(VoicebotError):
    """The registry has no published size or SHA-256 for a file, so it is neither fetched nor vouched for."""

    exit_code = EX_UNAVAILABLE


class UnknownModelError(VoicebotError):
    """A model name that is not in the registry."""

    exit_code = EX_USAGE


class DownloadStopped(VoicebotError):
    """A download was stopped on request; its .part file is kept for resuming."""

    exit_code = 130


def describe_os_error(error: OSError) -> str:
    """A short reason for an OSError, without the Python class name."""
    reason = error.strerror or str(error)
    return reason if not error.filename else f"{reason}: {os.fspath(error.filename)}"
