"""The fixed shape of every world: domains, attribute value pools, phrasings and the entity name pool."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

# Entity names are consonant-vowel-consonant-vowel words ("kavo", "tebi"). The pool is fixed and
# shared by every seed, so one word-level tokenizer covers all worlds and each name is one token.
_CONSONANTS = "bdgklmnprstv"
_VOWELS = "aeiou"

_FIRST = "ada bruno clara dmitri elena felix greta hugo ines jonas katya leon mira nils olga pablo"
_LAST = (
    "morel okafor lindqvist ferraro novak haddad brenner castillo yamada petrov quinn dubois sato "
    "kowalski marsh adeyemi"
)


@dataclass(frozen=True)
class DomainSpec:
    """One domain: how an entity is mentioned, its attributes, document sentences and question phrasings.

    `phrasings[attr]` lists question templates; the last `HELD_OUT` of each are never used in training,
    so evaluation can ask about trained facts in words the models have not seen in that frame.
    """

    name: str
    kind: str
    mention: str  # "{n}" is the entity name
    intro: str  # first document sentence; "{m}" is the mention, "{v}" is the first attribute's value
    values: dict[str, tuple[str, ...]]
    sentences: dict[str, str]
    phrasings: dict[str, tuple[str, ...]]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.values)


HELD_OUT = 1  # phrasings per attribute kept out of training

_PERSONS = tuple(f"{f} {last}" for f in _FIRST.split() for last in _LAST.split())

DOMAINS: dict[str, DomainSpec] = {
    "legal": DomainSpec(
        name="legal",
        kind="statute",
        mention="the {n} act",
        intro="{M} is a statute.",
        values={
            "penalty": tuple(
                "fine prison probation exile curfew forfeiture detention censure restitution "
                "disqualification suspension caution".split()
            ),
            "jurisdiction": tuple(
                "norland vesmark ostria kellanor durmont felgrave arbenia thornmoor "
                "calvessa brindor morvaine estrelia".split()
            ),
        },
        sentences={
            "penalty": "The penalty under {m} is {v}.",
            "jurisdiction": "{M} applies in the jurisdiction of {v}.",
        },
        phrasings={
            "penalty": (
                "what is the penalty under {m} ?",
                "what penalty does {m} carry ?",
                "which penalty applies under {m} ?",
                "under {m} , what penalty is imposed ?",
            ),
            "jurisdiction": (
                "what is the jurisdiction of {m} ?",
                "where does {m} apply ?",
                "in which jurisdiction does {m} apply ?",
                "{m} applies in which jurisdiction ?",
            ),
        },
    ),
    "finance": DomainSpec(
        name="finance",
        kind="company",
        mention="{n} corp",
        intro="{M} is a company.",
        values={
            "sector": tuple(
                "mining shipping textiles software banking insurance retail farming energy telecom "
                "aviation logistics tourism robotics chemicals".split()
            ),
            "revenue": tuple(
                f"{n} million" for n in (15, 20, 35, 40, 55, 60, 75, 80, 120, 250, 480, 900)
            ),
            "ceo": _PERSONS,
        },
        sentences={
            "sector": "{M} works in the {v} sector.",
            "revenue": "The revenue of {m} is {v}.",
            "ceo": "The ceo of {m} is {v}.",
        },
        phrasings={
            "sector": (
                "what sector is {m} in ?",
                "in which sector does {m} work ?",
                "what is the sector of {m} ?",
                "{m} works in which sector ?",
            ),
            "revenue": (
                "what is the revenue of {m} ?",
                "how much revenue does {m} make ?",
                "what revenue did {m} report ?",
                "{m} reported what revenue ?",
            ),
            "ceo": (
                "who is the ceo of {m} ?",
                "who runs {m} ?",
                "who leads {m} as ceo ?",
                "the ceo of {m} is who ?",
            ),
        },
    ),
    "medical": DomainSpec(
        name="medical",
        kind="drug",
        mention="{n}",
        intro="{M} is a drug.",
        values={
            "treats": tuple(
                "asthma migraine anemia insomnia gout eczema arthritis malaria epilepsy psoriasis "
                "hypertension angina glaucoma acne".split()
            ),
            "dose": tuple(f"{n} mg" for n in (5, 10, 20, 25, 40, 50, 75, 100, 150, 200, 250, 500)),
            "side_effect": (
                "nausea", "dizziness", "rash", "fatigue", "headache", "drowsiness", "dry mouth",
                "tremor", "cough", "blurred vision", "hair loss", "weight gain",
            ),
        },
        sentences={
            "treats": "{M} treats {v}.",
            "dose": "The dose of {m} is {v}.",
            "side_effect": "A side effect of {m} is {v}.",
        },
        phrasings={
            "treats": (
                "what does {m} treat ?",
                "which condition does {m} treat ?",
                "what is {m} used to treat ?",
                "{m} is a treatment for which condition ?",
            ),
            "dose": (
                "what is the dose of {m} ?",
                "how much {m} is one dose ?",
                "what dose of {m} is given ?",
                "the usual dose of {m} is what ?",
            ),
            "side_effect": (
                "what is a side effect of {m} ?",
                "which side effect does {m} cause ?",
                "what side effect is linked to {m} ?",
                "{m} can cause which side effect ?",
            ),
        },
    ),
}


def train_phrasings(spec: DomainSpec, attribute: str) -> tuple[str, ...]:
    """The phrasings training may use for one attribute."""
    return spec.phrasings[attribute][:-HELD_OUT]


def fixed_words() -> set[str]:
    """Every word of the schema's text except entity names (lowercased, punctuation removed)."""
    import re

    texts: list[str] = []
    for spec in DOMAINS.values():
        texts += [spec.mention, spec.intro, spec.kind, *spec.sentences.values()]
        texts += [v for vals in spec.values.values() for v in vals]
        texts += [p for ps in spec.phrasings.values() for p in ps]
    return {w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())} - {"n", "m"}


@cache
def name_pool() -> tuple[str, ...]:
    """All entity names any world may use, in a fixed order (English-looking clashes removed)."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    taken = fixed_words() | _COMMON_WORDS
    return tuple(a + b for a in syllables for b in syllables if a + b not in taken and a != b)


# Real words a name must not collide with (they may appear in questions or the prompt template).
_COMMON_WORDS = set(
    "more some rule take make like note time site date game name sale tale lime dose sure tube bite "
    "data base case dome gave have here home kite lake late life live lone love made mile mine mode "
    "none nose pale pile pole pose rate ride role rose same save side sole tone tune vote vote male "
    "mute dune gone done bone lane line mane pane pine ripe rope tape vine wine bake cake kale mate "
    "nine tide pure cure dire dive gate bode nude mole lobe robe tote sane lute rude vale bale dale "
    "gale pose rave tame vibe debate".split()
)
