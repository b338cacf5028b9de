"""The one family of errors pkvc raises on purpose.

Every error a user can cause or meet carries its process exit code and a
message that says what to do, so the CLI can print one line and exit; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "error (the message says which)",
    EXIT_USAGE: "usage error: bad command line or argument",
    EXIT_PARTIAL: "finished, but some entries could not be read or restored (each is named)",
    EXIT_NO_REPOSITORY: "no repository at that location",
    EXIT_LOCKED: "the repository is locked by another process",
    EXIT_WRONG_PASSWORD: "wrong password (no key slot opens with it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGINT)",
}


class PkvcError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = EXIT_ERROR


class UsageError(PkvcError):
    """The command line or an argument is wrong."""

    exit_code = EXIT_USAGE


class NoRepositoryError(PkvcError):
    """Nothing that looks like a pkvc repository is at the given location."""

    exit_code = EXIT_NO_REPOSITORY


class RepositoryExistsError(PkvcError):
    """`init` refuses to overwrite an existing repository."""


class LockedError(PkvcError):
    """Another process holds a lock this operation needs."""

    exit_code = EXIT_LOCKED


class WrongPasswordError(PkvcError):
    """No key slot opens with the password given."""

    exit_code = EXIT_WRONG_PASSWORD


class IntegrityError(PkvcError):
    """Stored bytes do not match their name or fail authentication."""


class BlobNotFoundError(PkvcError):
    """The repository holds no blob with that ref."""


class SchemaError(PkvcError):
    """A blob is not the schema blob a caller needs (bad JSON, wrong type, hostile field)."""


class SignatureError(PkvcError):
    """A signed blob does not verify, or its signer key cannot be found."""


class BackendError(PkvcError):
    """The storage below the repository failed (I/O error, missing object)."""


class PartialError(PkvcError):
    """The work finished but some entries were skipped or not restored; the message
    says how many (each was named before)."""

    exit_code = EXIT_PARTIAL
