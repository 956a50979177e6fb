"""The derived columns the contract's expectations assert, computed in Python from the batch's cells.

One row of the frame per batch row: the four batch columns as text (undecodable bytes shown with
U+FFFD), a 1-based `row` number GX reports failing rows by, and the derived columns named in
`batch_rows.json` and `batch_shift.json`. A derived value is None where it cannot be computed (a
null cell, text that is not valid UTF-8, an unknown skill, a blank prompt): GX skips nulls, so each
problem is reported once, by the expectation about that problem, and not again by every check that
depends on the same text.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from data_contracts.contamination import ContaminationIndex, normalise
from data_contracts.shift import features

ROUND_TRIP = "(encode/decode round trip changes the text)"


def _text_ok(value) -> bool:
    """Valid text: decodable UTF-8, no lone surrogates, no U+FFFD left by an earlier lossy decode."""
    if not isinstance(value, str):
        return value is None
    if "\ufffd" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value):
    """Printable text for reports and GX (undecodable bytes as U+FFFD, lone surrogates escaped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return value


@dataclass
class TokenizerProbe:
    """What the student's tokenizer can encode: no unknown token, and an exact encode/decode round trip."""

    tokenizer: object
    _char_ok: dict = field(default_factory=dict)

    @property
    def unk_id(self):
        return getattr(self.tokenizer, "unk_token_id", None)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _round_trips(self, text: str, ids: list[int]) -> bool:
        return (self.unk_id is None or self.unk_id not in ids) and self._decode(ids) == text

    def char_ok(self, char: str) -> bool:
        if char not in self._char_ok:
            self._char_ok[char] = self._round_trips(char, self.encode([char])[0])
        return self._char_ok[char]

    def unencodable(self, text: str, ids: list[int]) -> str:
        """The distinct characters of `text` the tokenizer cannot encode ("" when it round-trips)."""
        if self._round_trips(text, ids):
            return ""
        bad = "".join(dict.fromkeys(c for c in text if not self.char_ok(c)))
        return bad or ROUND_TRIP


def derive_frame(cells: dict[str, list], probe: TokenizerProbe, index: ContaminationIndex, skills: Mapping):
    """The frame GX validates: batch columns, `row`, and every derived column."""
    import pandas as pd

    ids, skill_col, prompts, answers = (cells[c] for c in ("id", "skill", "prompt", "answer"))
    n = len(ids)
    valid = [all(_text_ok(cells[c][i]) for c in cells) for i in range(n)]
    prompt_ok = [isinstance(p, str) and _text_ok(p) for p in prompts]
    answer_ok = [isinstance(a, str) and _text_ok(a) for a in answers]
    blank = [p.strip() == "" if ok else None for p, ok in zip(prompts, prompt_ok)]
    prompt_ids = dict(zip((i for i in range(n) if prompt_ok[i]),
                          probe.encode([p for p, ok in zip(prompts, prompt_ok) if ok])))
    answer_ids = dict(zip((i for i in range(n) if answer_ok[i]),
                          probe.encode([a for a, ok in zip(answers, answer_ok) if ok])))

    rows = []
    for i in range(n):
        skill = skills.get(skill_col[i]) if isinstance(skill_col[i], str) else None
        prompt = prompts[i] if prompt_ok[i] else None
        answer = answers[i] if answer_ok[i] else None
        bad_chars = None
        if prompt is not None or answer is not None:
            found = [probe.unencodable(prompt, prompt_ids[i]) if prompt is not None else "",
                     probe.unencodable(answer, answer_ids[i]) if answer is not None else ""]
            bad_chars = "".join(dict.fromkeys("".join(f for f in found if f != ROUND_TRIP)))
            if ROUND_TRIP in found:
                bad_chars = f"{bad_chars} {ROUND_TRIP}".strip()
        filled = prompt is not None and not blank[i]
        rows.append({
            "row": i + 1,
            "id": _shown(ids[i]), "skill": _shown(skill_col[i]), "prompt": _shown(prompts[i]),
            "answer": _shown(answers[i]),
            "text_valid_utf8": valid[i],
            "known_skill": skill.id if skill else None,
            "skill_role": skill.role if skill else None,
            "prompt_blank": blank[i],
            "prompt_key": normalise(prompt) if filled else None,
            "prompt_tokens": len(prompt_ids[i]) if filled else None,
            "answer_tokens": len(answer_ids[i]) if answer is not None else None,
            "unencodable_chars": bad_chars,
            "answer_well_formed": skill.well_formed(answer) if skill and answer is not None else None,
            "contaminated_by": index.match(prompt) if filled else None,
            **features(prompt if filled else None, answer),
        })
    # Every column but `row` is `object`, so GX sees None (skipped) and ints stay ints, not NaN and floats.
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype="int64" if c == "row" else object)
                         for c in FRAME_COLUMNS})


FRAME_COLUMNS = ["row", "id", "skill", "prompt", "answer", "text_valid_utf8", "known_skill", "skill_role",
                 "prompt_blank", "prompt_key", "prompt_tokens", "answer_tokens", "unencodable_chars",
                 "answer_well_formed", "contaminated_by", "prompt_shape", "prompt_chars", "answer_chars"]
