"""The one exception tree of sdbatch.

    SdbatchError                  base; every error we raise on purpose
    ├── UsageError                bad command line                       -> exit 2
    ├── OutputInUse               another run holds the output directory -> exit 2
    ├── JobError                  bad job file (names file, field/line, fix) -> exit 2
    │   └── TemplateError         bad prompt template (names the position)
    ├── PreflightError            the job cannot run on these backends  -> exit 2
    ├── OutputError               the output directory cannot be written -> exit 1
    └── BackendError              one request to one backend went wrong
        ├── TransportError        refused, reset, DNS, TLS: retryable
        ├── RequestTimeout        no answer within timeout_s: retryable
        ├── HTTPStatusError       non-2xx; see ``HTTPStatusError`` for what each status means
        ├── BadResponseError      2xx that is not a usable result: retryable
        │   └── SubstitutionError the server used another model or sampler than asked
        └── InputError            an img2img input changed or vanished: fails the variant

Foreign exceptions (aiohttp, OSError, yaml, pydantic) are mapped into this tree at one choke
point per boundary (``raise X(...) from exc``); the CLI maps the tree to exit codes in one place.
"""

from __future__ import annotations

import re
from enum import IntEnum

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ExitStatus(IntEnum):
    """What ``sdbatch`` exits with; the CLI maps every outcome to one of these in one place."""

    OK = 0
    FAILED = 1  # some variants failed for good, or the run stopped on an error
    USAGE = 2  # bad command line, job file or backends: nothing was generated
    INTERRUPTED = 130  # Ctrl-C / SIGTERM: rerun to finish


class SdbatchError(Exception):
    """Base of every error sdbatch raises on purpose."""

    exit_code = ExitStatus.FAILED


class UsageError(SdbatchError):
    exit_code = ExitStatus.USAGE


class JobError(SdbatchError):
    """A job file that cannot be used. The message names the file, the field or line, and the fix."""

    exit_code = ExitStatus.USAGE

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
    exit_code = ExitStatus.USAGE


class OutputError(SdbatchError):
    """The output directory cannot be written (ENOSPC, permissions, read-only)."""

    exit_code = ExitStatus.FAILED


class OutputInUse(SdbatchError):
    """The output directory is not ours to write: another run holds it, or it is not an output."""

    exit_code = ExitStatus.USAGE


class BackendError(SdbatchError):
    """One request to one backend failed. ``retryable`` says whether another attempt may succeed.

    Its message often quotes a server; terminal control characters in it are escaped (``\\x1b``),
    so no server can write escape sequences to the user's terminal or logs."""

    retryable = True

    def __init__(self, message: str, *, backend: str = "", status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message))


class TransportError(BackendError):
    retryable = True


class RequestTimeout(BackendError):
    retryable = True


class HTTPStatusError(BackendError):
    """A non-2xx answer. The status says whose fault it is:

    - 408, 429 and 5xx: transient; the same request may succeed later (429: after
      ``retry_after_s``, and it never counts against the backend's health);
    - 401, 403, 404, 405, 407, 413 to a generation: the *backend* cannot serve it (credentials,
      a proxy, a missing route, a body limit), whatever the variant asks; another backend may;
      so can a redirect sdbatch does not follow (3xx: to another origin, or a POST turned GET);
    - other 4xx (400, 422): the *variant* asks for something invalid.
    """

    RETRYABLE_STATUSES = frozenset({408, 429})
    BACKEND_FAULT_STATUSES = frozenset({301, 302, 303, 307, 308, 401, 403, 404, 405, 407, 413})

    def __init__(self, message: str, *, backend: str = "", status: int,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, backend=backend, status=status)
        self.retry_after_s = retry_after_s
        self.retryable = (status >= 500 or status in self.RETRYABLE_STATUSES
                          or status in self.BACKEND_FAULT_STATUSES)

    @property
    def backend_fault(self) -> bool:
        return self.status in self.BACKEND_FAULT_STATUSES

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


class BadResponseError(BackendError):
    retryable = True


class SubstitutionError(BadResponseError):
    """The server silently used something other than what was asked (model, sampler)."""

    retryable = True


class InputError(BackendError):
    """An img2img input file changed or disappeared since the plan hashed it: the bytes that
    would be sent are not the ones recorded. No backend is at fault and none can do better."""

    retryable = False
