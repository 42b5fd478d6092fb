"""The answer judge: whether the council answered a world's question as the world says."""

from __future__ import annotations

from council.agreement import is_unknown, normalise
from council.types import CouncilAnswer
from council.world.generator import Question


def is_correct(q: Question, ans: CouncilAnswer) -> bool:
    """Right answer (normalised), or (for an unanswerable question) an abstention or "unknown"."""
    if q.split == "unanswerable":
        return abstains(ans)
    return not ans.abstained and normalise(ans.answer) == normalise(q.answer)


def abstains(ans: CouncilAnswer) -> bool:
    """The council abstained, or its answer says it does not know."""
    return ans.abstained or is_unknown(ans.answer)
