"""Checks that a student, a teacher and the skills fit together, run before any training starts.

On-policy distillation compares the student's and the teacher's next-token distributions position by
position over one vocabulary (TRL's `DistillationTrainer` supports one teacher with the student's
vocabulary), and so does the forgetting suite's drift metric: a teacher with another tokenizer is not
supported, and the error says so rather than training on misaligned tokens. These are the project's only
vocabulary checks; the distillation stage, the routed trainer and the drift metric all call them.
A skill declared with `chat: true` is written for a chat model: its prompts must go through a chat
template, so a tokenizer without one is refused instead of silently seeing raw text.
"""

from collections.abc import Iterable
from pathlib import Path

from continual_opd.modelio import load_tokenizer
from continual_opd.prompts import is_chat


class IncompatibleModels(ValueError):
    """The student, the teacher and the skills cannot be used together; the message says what to change."""


def check_same_tokenizer(student_tok, teacher_tok, student: str = "student", teacher: str = "teacher") -> None:
    """Refuse a teacher whose tokenizer differs from the student's (vocabulary, or the EOS/pad tokens)."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s = sorted(set(sv) - set(tv))[:3]
        only_t = sorted(set(tv) - set(sv))[:3]
        moved = sorted(t for t in set(sv) & set(tv) if sv[t] != tv[t])[:3]
        raise IncompatibleModels(
            f"the tokenizers of {student} ({len(sv)} tokens) and {teacher} ({len(tv)} tokens) have different "
            f"vocabularies (only in {student}: {only_s}; only in {teacher}: {only_t}; other ids: {moved}). "
            "Distillation compares per-token distributions over one shared vocabulary, so a teacher with a different tokenizer "
            "is not supported: pick a teacher of the same model family (same tokenizer), or start the teacher "
            "from the champion (teacher.init: champion).")
    for attr in ("eos_token", "pad_token"):
        if getattr(student_tok, attr, None) != getattr(teacher_tok, attr, None) and getattr(teacher_tok, attr, None):
            raise IncompatibleModels(
                f"the tokenizers of {student} and {teacher} share a vocabulary but differ in {attr} "
                f"({getattr(student_tok, attr, None)!r} vs {getattr(teacher_tok, attr, None)!r}); not supported: "
                "completions would end at different tokens. Use the same tokenizer files for both.")


def check_chat_template(tokenizer, skills: Iterable, model: str = "student") -> None:
    """Refuse a tokenizer without a chat template when a skill declares `chat: true`."""
    needing = [s.id for s in skills if getattr(s, "chat", False)]
    if needing and not is_chat(tokenizer):
        raise IncompatibleModels(
            f"skill(s) {', '.join(needing)} declare chat: true, but the {model}'s tokenizer has no chat template "
            "(tokenizer_config.json / chat_template.jinja). Use an instruct/chat model folder, add a chat template "
            "to its tokenizer, or set chat: false in the skill file if raw prompts are intended.")


def check_same_vocab_size(student_config, teacher_config, student: str = "student",
                          teacher: str = "teacher") -> None:
    """Refuse models whose output layers have different sizes (a tokenizer match alone does not ensure it)."""
    s_size = student_config.get_text_config().vocab_size
    t_size = teacher_config.get_text_config().vocab_size
    if s_size != t_size:
        raise IncompatibleModels(
            f"{teacher} has vocab_size {t_size} but {student} has {s_size}: distillation compares full next-token "
            "distributions over one shared vocabulary, so both need the same output layer size.")


def check_distillable(student_folder: str | Path, teacher_folder: str | Path, trust_remote_code: bool = False) -> None:
    """Before distilling: the teacher folder shares the student's tokenizer and output-layer size."""
    from transformers import AutoConfig

    names = f"student ({student_folder})", f"teacher ({teacher_folder})"
    check_same_tokenizer(load_tokenizer(student_folder, trust_remote_code),
                         load_tokenizer(teacher_folder, trust_remote_code), *names)
    configs = [AutoConfig.from_pretrained(f, local_files_only=True, trust_remote_code=trust_remote_code)
               for f in (student_folder, teacher_folder)]
    check_same_vocab_size(*configs, *names)


def check_update_models(student_folder: str | Path, teacher_init: str, skills: Iterable,
                        trust_remote_code: bool = False) -> None:
    """Before an update: the student's folder loads, chat templates are where skills need them, and a teacher
    started from another local folder shares the student's tokenizer. `teacher_init` is TeacherConfig.init."""
    skills = list(skills)
    student_tok = load_tokenizer(student_folder, trust_remote_code)
    check_chat_template(student_tok, skills, f"student ({student_folder})")
    if teacher_init != "champion" and not teacher_init.startswith("registry:"):
        teacher_tok = load_tokenizer(teacher_init, trust_remote_code)
        check_same_tokenizer(student_tok, teacher_tok, f"student ({student_folder})", f"teacher ({teacher_init})")
