"""What a skill is, and the catalogue of skills that one update works with.

A skill is small and self-contained, like nanochat's `Task`: it lists its train and held-out items
(`items(split, n, seed)`) and says whether one output is right (`verify`, strict; `verify_lenient`, case
and whitespace ignored, to tell a format slip from lost knowledge). Targets are what updates teach; cores
are what every update must keep.

The catalogue is passed explicitly to every stage: the flow builds it once from its parameters (YAML
skill files, or the demo world's skills), so which skills exist is never process-wide state, and two
updates in one process may use two catalogues.

The split of a prompt is a pure function of the skill id and the prompt text (a hash), so train and
held-out items can never share a prompt, however many items are drawn and from whatever seed.
"""

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

SPLITS = ("train", "heldout")
ROLES = ("target", "core")
HELDOUT_FRACTION = 0.25


@dataclass(frozen=True)
class Item:
    """One evaluation or training example; `id` is stable across runs (skill + prompt)."""

    id: str
    skill: str
    prompt: str
    answer: str


def split_of(skill_id: str, prompt: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """`train` or `heldout`, decided by a hash of (skill, prompt)."""
    digest = hashlib.sha256(f"{skill_id}\x00{prompt}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") / 2**32 < heldout_fraction else "train"


def item_id(skill_id: str, prompt: str) -> str:
    return f"{skill_id}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}"


class Skill(Protocol):
    """The interface every stage relies on (demo-world generators and YAML-declared skills both have it)."""

    id: str
    role: str  # "target" or "core"

    def verify(self, output: str, answer: str) -> bool: ...

    def verify_lenient(self, output: str, answer: str) -> bool: ...

    def well_formed(self, answer: str) -> bool: ...

    def items(self, split: str, n: int, seed: int = 0) -> list[Item]: ...


class UnknownSkill(KeyError):
    """A skill id that the catalogue does not hold; the message lists the ones it does."""

    def __str__(self) -> str:
        return str(self.args[0])


class Catalogue(Mapping):
    """The skills of one update, by id, in declaration order.

    Equal catalogues (same sources, same skill ids) hash alike, so functions that cache per catalogue
    (the contamination index) can take one as an argument.
    """

    def __init__(self, skills: Iterable, sources: tuple[str, ...] = ()):
        self._skills = {s.id: s for s in skills}
        self.sources = tuple(sources)
        for s in self._skills.values():
            if s.role not in ROLES:
                raise ValueError(f"skill {s.id!r} has role {s.role!r}; roles are {ROLES}")

    def __getitem__(self, skill_id: str):
        try:
            return self._skills[skill_id]
        except KeyError:
            where = f" (skill files: {', '.join(self.sources)})" if self.sources else ""
            raise UnknownSkill(f"unknown skill {skill_id!r}; known skills: {', '.join(self._skills)}{where}") \
                from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._skills)

    def __len__(self) -> int:
        return len(self._skills)

    def __hash__(self) -> int:
        return hash((self.sources, tuple(self._skills)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Catalogue):
            return NotImplemented
        return (self.sources, tuple(self._skills)) == (other.sources, tuple(other._skills)) and all(
            self._skills[k] is other._skills[k] or self._skills[k] == other._skills[k] for k in self._skills)

    def __repr__(self) -> str:
        return f"Catalogue({', '.join(self._skills)})"

    @property
    def core(self) -> tuple[str, ...]:
        """Ids of the core skills (what every update must keep)."""
        return tuple(s.id for s in self._skills.values() if s.role == "core")

    @property
    def targets(self) -> tuple[str, ...]:
        """Ids of the target skills (what updates teach)."""
        return tuple(s.id for s in self._skills.values() if s.role == "target")
