"""Contamination: does a training prompt leak an item of an evaluation suite the gate uses?

A row is contaminated when its normalised prompt equals a suite prompt, contains a whole suite prompt
that is shorter than `n` characters, or shares an `n`-character substring with a longer suite prompt.
GPT-3 and lm-eval look for shared 13-grams of words and Llama 2 for 10+ shared tokens; the demo world's
prompts are 5-12 characters ("12+34=", "rev:abc="), so n-grams are counted in normalised characters
and a suite item shorter than `n` counts as one n-gram of its own length. Because every demo prompt
ends in "=", a two-digit sum is only flagged when it *is* a held-out item (or one with its answer or
spaces added), not because it shares digits with one.
"""

import unicodedata
from functools import lru_cache

from continual_opd.skills import Catalogue
from continual_opd.suites import all_suite_items


def normalise(text: str) -> str:
    """NFKC, case-folded, with all whitespace removed: `" 12 + 34 ="` and `"12+34="` are the same prompt."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


class ContaminationIndex:
    """An index of suite prompts that answers `match(prompt)` in O(len(prompt) x distinct short lengths)."""

    def __init__(self, items, n: int):
        if n < 2:
            raise ValueError(f"contamination n-gram length must be at least 2 characters, got {n}")
        self.n = n
        self.size = len(items)
        self.exact: dict[str, object] = {}
        self.short: dict[int, dict[str, object]] = {}
        self.grams: dict[str, object] = {}
        for item in items:
            key = normalise(item.prompt)
            if not key:
                continue
            self.exact.setdefault(key, item)
            if len(key) < n:
                self.short.setdefault(len(key), {}).setdefault(key, item)
            else:
                for i in range(len(key) - n + 1):
                    self.grams.setdefault(key[i:i + n], item)

    def match(self, prompt: str) -> str:
        """"" when clean, else which suite item the prompt leaks and how."""
        key = normalise(prompt)
        item = self.exact.get(key)
        if item is not None:
            return f"{item.id} (suite {item.skill}): is the held-out prompt {item.prompt!r}"
        for length, table in self.short.items():
            for i in range(len(key) - length + 1):
                item = table.get(key[i:i + length])
                if item is not None:
                    return f"{item.id} (suite {item.skill}): contains the held-out prompt {item.prompt!r}"
        for i in range(len(key) - self.n + 1):
            item = self.grams.get(key[i:i + self.n])
            if item is not None:
                return (f"{item.id} (suite {item.skill}): shares {key[i:i + self.n]!r} with the held-out prompt "
                        f"{item.prompt!r}")
        return ""


@lru_cache(maxsize=4)
def suite_index(catalogue: Catalogue, suite_size: int, n: int) -> ContaminationIndex:
    """The index over every suite any gate of this catalogue evaluates (all target skills and every core skill)."""
    return ContaminationIndex(all_suite_items(catalogue, suite_size), n)
