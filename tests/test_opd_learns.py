"""On-policy distillation learns: a short seeded run from the demo base moves the student towards a trained teacher.

The end-to-end tests accept a promotion or a rejection, and the forgetting tests pass a student that learns
nothing; this one fails if the routed trainer stops teaching. From the demo base, a teacher fine-tuned on `add`,
then 60 opd steps with the stage's default replay: on held-out items the student must gain at least a quarter of
what its teacher gained over the base and 5 points (a student that learns nothing gains 0), and keep every core
skill within 3 points.

The thresholds hold for any base the pretraining recipe produces (`demo_world.pretrain`: it stops with `add`
between 35% and 65% and every core skill at 97% or more): they are relative to the base and to the teacher, and
the test first checks that its teacher gained at least 15 points, or says that the teacher, not distillation,
is what failed. How fast opd learns add depends on the base: on a base at 35.5% (a fresh machine's), 30 steps
gained 1.5 points and 60 steps 10.3, 0.36 of the teacher's 28.5; on a base at 44%, 30 steps had gained more than
half of it.
"""

import pytest

from demo_world.skills import CATALOGUE
from tests.helpers.quick_models import make_batch, make_teacher


@pytest.mark.slow
def test_a_short_opd_run_learns_the_teachers_skill_and_keeps_the_core(tmp_path, champion, base_folder, home,
                                                                      torch_threads):
    from continual_opd.decoding import skill_accuracy
    from continual_opd.modelio import load_model
    from continual_opd.suites import build_suites
    from tasks.distill import distill
    from tasks.distill_config import DistillConfig

    teacher = make_teacher(base_folder, tmp_path / "teacher", steps=80, version="902")  # 80 x 64 of add's ~6,000
    cfg = DistillConfig(steps=60, prompts_per_step=64, eval_every=60, eval_items=50, checkpoint_every=60,
                        registered_model="test-learns-student", seed=11)
    candidate = distill(make_batch(tmp_path, n=1024), champion, teacher, cfg, CATALOGUE, home)

    suites = build_suites(CATALOGUE, ["add", *CATALOGUE.core], size=400)

    def accuracy(folder) -> dict[str, float]:
        model, tok = load_model(folder, device="cpu")
        return {name: skill_accuracy(model, tok, items, CATALOGUE[name].verify)[0] for name, items in suites.items()}

    base, taught, student = accuracy(base_folder), accuracy(teacher.model.folder), accuracy(candidate.model.folder)
    teacher_gain, student_gain = taught["add"] - base["add"], student["add"] - base["add"]
    assert teacher_gain >= 0.15, f"the test's teacher gained only {teacher_gain:+.3f} on add: fix the teacher first"
    assert student_gain >= max(0.05, 0.25 * teacher_gain), (
        f"opd did not learn: add {base['add']:.3f} -> {student['add']:.3f} ({student_gain:+.3f}) while its teacher "
        f"gained {teacher_gain:+.3f}")
    for core in CATALOGUE.core:
        assert student[core] >= base[core] - 0.03, f"{core} fell {base[core]:.3f} -> {student[core]:.3f}"
