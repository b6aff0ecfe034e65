"""Typed errors: every message reads "where: what; expected what" and may carry a hint."""
from __future__ import annotations


class BitsmithError(Exception):
    """Base of all user-facing errors. `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(BitsmithError):
    """A job spec (file, override or field) is invalid."""

    exit_code = 2


class UsageError(BitsmithError):
    """A CLI argument is invalid (bad id, ambiguous prefix, unknown name)."""

    exit_code = 2


class NotFoundError(UsageError):
    """A run, artifact or sweep reference matches nothing."""


class ArtifactError(BitsmithError):
    """An artifact is missing, corrupted or would escape the artifact root."""


class UnstorableError(ArtifactError):
    """A path cannot be stored as an artifact (symlink, FIFO, device, or a name with control characters)."""

    exit_code = 2


class DataError(BitsmithError):
    """A data file is malformed (binary text, bad JSONL line, missing field)."""

    exit_code = 2


class StoreError(BitsmithError):
    """The metadata store is unreachable or its schema does not match this version."""

    exit_code = 3


class JobError(BitsmithError):
    """A job failed while running (the run row carries the traceback)."""


class OutputError(JobError):
    """A worker returned an output its job kind does not declare (role or artifact kind), or left out a required one."""


class JobTimeout(JobError):
    """A job ran past its `timeout_s`."""


class JobCancelled(JobError):
    """A job was cancelled by a user."""
