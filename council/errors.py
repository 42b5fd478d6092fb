"""The error hierarchy: every CouncilError knows its HTTP status and a stable type name."""

from __future__ import annotations


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
