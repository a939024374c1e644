"""The fleet's branches of the exception tree (``pipeline.errors``), kept here beside their code.

    SdbatchError
    ├── UsageError
    │   └── FleetUsageError   a bad --queue / --out URL, or no such job in the queue -> exit 2
    ├── QueueError            Redis cannot be reached (within the patience) or refused us -> exit 1
    └── OutputError
        └── StoreError        the object store or shared folder cannot be read or written -> exit 1

Foreign exceptions (redis-py, botocore, OSError) become these at one choke point each:
``redisq.Queue.call`` and the ``objstore`` classes. Messages never hold credentials.
"""

from __future__ import annotations

from pipeline.errors import OutputError, SdbatchError, UsageError


class FleetUsageError(UsageError):
    """A URL or job selection that cannot work; the message says what to write instead."""


class QueueError(SdbatchError):
    """The Redis queue failed: unreachable past the patience, authentication, or a bad reply."""


class StoreError(OutputError):
    """The object store (S3-compatible) or the shared folder failed for good."""
