"""The error hierarchy: every CouncilError knows its HTTP status and a stable type name; `incident` turns any
failure into what a caller may see of it (a stable code, a short reason, an incident id) and logs the detail."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

log = logging.getLogger(__name__)

MEMBER_ERROR = "member_error"
MEMBER_TIMEOUT = "member_timeout"


class CouncilError(Exception):
    """Base class. `status` is the HTTP status the API answers with; `type` is the JSON error type."""

    status: int = 500
    type: str = "council_error"

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"type": self.type, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class InvalidRequest(CouncilError):
    """The caller's request is malformed or out of range."""

    status = 400
    type = "invalid_request"


class ConfigError(CouncilError):
    """A config file or object failed validation; the message names the field."""

    status = 400
    type = "invalid_config"


class QuestionTooLong(InvalidRequest):
    """The question leaves no room in any chosen specialist's context window."""

    status = 413
    type = "question_too_long"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the configured limit (http.max_body_bytes)."""

    status = 413
    type = "payload_too_large"


class UnknownTenant(CouncilError):
    status = 404
    type = "unknown_tenant"


class UnknownSpecialist(CouncilError):
    status = 404
    type = "unknown_model"


class Unauthorized(CouncilError):
    status = 401
    type = "unauthorized"


class Forbidden(CouncilError):
    """The caller's key is valid but lacks the right for this (a write with a read-only key, public writes)."""

    status = 403
    type = "forbidden"


class QuorumNotMet(CouncilError):
    """Fewer than `quorum` members answered; details list each member's error."""

    status = 503
    type = "quorum_not_met"


class Overloaded(CouncilError):
    """The council or a member refused work because its queue is full; retry after `retry_after_s`."""

    status = 503
    type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, details: dict[str, object] | None = None):
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class RateLimited(Overloaded):
    """The caller's key is over its requests or generated tokens per minute; retry after `retry_after_s`."""

    status = 429
    type = "rate_limited"


class RetrievalTimeout(CouncilError):
    """The document store did not answer within retrieval.timeout_s; the request is given up, not held."""

    status = 504
    type = "retrieval_timeout"


class Unreachable(CouncilError):
    """The council could not be reached at all (connection refused, DNS, no such Serve app)."""

    status = 503
    type = "unreachable"


class ModelLoadError(CouncilError):
    """A model or tokenizer could not be loaded from the given path or hub id."""

    status = 500
    type = "model_load_error"


class BadInputFile(CouncilError):
    """An input file (Parquet, text) is unreadable or lacks a required column; names file and column."""

    status = 400
    type = "bad_input_file"


class StoreBusy(CouncilError):
    """An embedded Chroma folder is held by another process (one process only); names that process."""

    status = 409
    type = "store_busy"


class StoreAuthError(CouncilError):
    """The Chroma server refused the council's token (missing or wrong); names the variable that holds it."""

    status = 500
    type = "store_auth_failed"


class OutputBusy(CouncilError):
    """A job's output folder is being written by another run (one run per folder); names that run."""

    status = 409
    type = "output_busy"


class MemberUnavailable(CouncilError):
    """A member's replica died mid-request or is not there now (Ray's actor errors, which name nodes and PIDs)."""

    status = 503
    type = "member_unavailable"


@dataclass(frozen=True)
class Incident:
    """What a caller is told of a failure: `code` (stable), `reason` (short, no internals), `id` (in the log)."""

    code: str
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}" + (f" (incident {self.id})" if self.id else "")


def incident(error: BaseException, what: str) -> Incident:
    """The caller's view of `what`'s failure `error`, its detail (type, message, traceback) logged under a new
    incident id. A CouncilError keeps its type and message (the council's own words, written for callers); any
    other error (an engine's, Ray's: they name hosts, PIDs, paths) is `member_error` with a fixed reason."""
    incident_id = uuid.uuid4().hex[:12]
    log.warning("%s failed (incident %s): %s: %s", what, incident_id, type(error).__name__, error, exc_info=error)
    if isinstance(error, CouncilError):
        return Incident(error.type, error.message[:300], incident_id)
    if isinstance(error, TimeoutError):
        return Incident(MEMBER_TIMEOUT, "timed out", incident_id)
    return Incident(MEMBER_ERROR, "the member failed", incident_id)
