"""council: a council of specialist LLMs with retrieval, served on Ray. Public API only; no heavy imports."""

from council.config import CouncilConfig
from council.types import AskRequest, Chunk, CouncilAnswer, Document, MemberAnswer

__all__ = ["AskRequest", "Chunk", "Client", "CouncilAnswer", "CouncilConfig", "Document", "MemberAnswer"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Client pulls in HTTP/Ray code only when asked for.
    if name == "Client":
        from council.client import Client

        return Client
    raise AttributeError(name)
