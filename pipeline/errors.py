"""The one exception tree of sdbatch.

    SdbatchError                  base; every error we raise on purpose
    ├── UsageError                bad command line                       -> exit 2
    ├── JobError                  bad job file (names file, field/line, fix) -> exit 2
    │   └── TemplateError         bad prompt template (names the position)
    ├── PreflightError            the job cannot run on these backends  -> exit 2
    ├── OutputError               the output directory cannot be written -> exit 1
    └── BackendError              one request to one backend went wrong
        ├── TransportError        refused, reset, DNS, TLS: retryable
        ├── RequestTimeout        no answer within timeout_s: retryable
        ├── HTTPStatusError       non-2xx; retryable for 408, 429 and 5xx
        └── BadResponseError      2xx that is not a usable result: retryable
            └── SubstitutionError the server used another model or sampler than asked

Foreign exceptions (aiohttp, OSError, yaml, pydantic) are mapped into this tree at one choke
point per boundary (``raise X(...) from exc``); the CLI maps the tree to exit codes in one place.
"""

from __future__ import annotations


class SdbatchError(Exception):
    """Base of every error sdbatch raises on purpose."""

    exit_code = 1


class UsageError(SdbatchError):
    exit_code = 2


class JobError(SdbatchError):
    """A job file that cannot be used. The message names the file, the field or line, and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None,
                 hint: str | None = None) -> None:
        self.path = path
        self.where = where
        self.hint = hint
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        head = ": ".join(p for p in (self.path, self.where) if p)
        text = f"{head}: {self.detail}" if head else self.detail
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class TemplateError(JobError):
    """A prompt template that does not parse; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, *, template: str, position: int,
                 hint: str | None = None) -> None:
        self.template = template
        self.position = position
        caret = " " * min(position, 200) + "^"
        shown = template if len(template) <= 200 else template[:200] + "…"
        super().__init__(f"{message} at character {position + 1}\n    {shown}\n    {caret}",
                         hint=hint)


class PreflightError(SdbatchError):
    exit_code = 2


class OutputError(SdbatchError):
    """The output directory cannot be written (ENOSPC, permissions, read-only)."""

    exit_code = 1


class BackendError(SdbatchError):
    """One request to one backend failed. ``retryable`` says whether another attempt may succeed."""

    retryable = True

    def __init__(self, message: str, *, backend: str = "", status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(message)


class TransportError(BackendError):
    retryable = True


class RequestTimeout(BackendError):
    retryable = True


class HTTPStatusError(BackendError):
    RETRYABLE_STATUSES = frozenset({408, 429})

    def __init__(self, message: str, *, backend: str = "", status: int) -> None:
        super().__init__(message, backend=backend, status=status)
        self.retryable = status >= 500 or status in self.RETRYABLE_STATUSES


class BadResponseError(BackendError):
    retryable = True


class SubstitutionError(BadResponseError):
    """The server silently used something other than what was asked (model, sampler)."""

    retryable = True
