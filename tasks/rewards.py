"""Verifiable rewards for the teacher's RL: a program, not a model, says whether a completion is right.

A reward has a name and a version. Both are recorded on the teacher's MLflow run and registry version
and are part of the teacher's reuse key, so changing what a reward pays (a new version) always trains
a new teacher instead of silently reusing one trained for another objective.

The default correctness reward applies the skill's own verifier to the completion and the batch's
answer, exactly as the teacher gate and every evaluation read answers (`continual_opd.decoding`).
"""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RewardFunction:
    """A named, versioned reward: `score(completion, answer) -> float` for one completion."""

    name: str
    version: str
    score: Callable[[str, str], float] = field(repr=False, compare=False)
    description: str = ""

    @property
    def key(self) -> str:
        """`name@version`, the identity recorded in tags and reuse keys."""
        return f"{self.name}@{self.version}"

    def for_trl(self) -> "TrlReward":
        return TrlReward(self)


class TrlReward:
    """Adapts a `RewardFunction` to TRL's reward-function calling convention.

    TRL passes the dataset's extra columns as keyword lists (here `answer`) and names the reward in its
    logs after `__name__`, so the curves read `rewards/<name>_v<version>/mean`.
    """

    def __init__(self, reward: RewardFunction):
        self.reward = reward
        self.__name__ = f"{reward.name}_v{reward.version}"

    def __call__(self, prompts, completions, answer, **_) -> list[float]:
        return [float(self.reward.score(completion_text(c), a)) for c, a in zip(completions, answer, strict=True)]


def completion_text(completion) -> str:
    """The completion's text, whether TRL gives a plain string or (chat models) a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion if message.get("role") == "assistant")


def exact_match(skill) -> RewardFunction:
    """1 when the skill's verifier accepts the completion against the batch's answer, else 0."""
    return RewardFunction(
        "exact_match", "1", lambda completion, answer: 1.0 if skill.verify(completion, answer) else 0.0,
        f"1 if {skill.id}'s verifier accepts the completion against the batch answer (exact match), else 0",
    )


def format_reward(skill) -> RewardFunction:
    """1 when the completion has the shape of an answer of the skill (its `answer_pattern`), else 0."""
    return RewardFunction(
        "well_formed", "1", lambda completion, answer: 1.0 if skill.well_formed(completion) else 0.0,
        f"1 if the completion matches {skill.id}'s answer pattern, else 0",
    )
