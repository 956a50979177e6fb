"""`continual-opd demo`: the whole product on the embedded demo world, through the same path as `run`.

Bootstraps the base when the home has no champion, drops a fresh demo batch into the inbox (a new seed
each time, since a batch already trained on is skipped by its digest), then runs one update.
"""

from cli.outcome import EXIT_ERROR
from cli.run import run_update
from continual_opd.batch_io import write_jsonl
from continual_opd.home import current_home, prepare_stores
from demo_world.bootstrap import bootstrap
from demo_world.skills import CATALOGUE
from flows.params import ParamsError, load_params


def demo_batch_path(home, skill: str, rows: int):
    """A demo batch file in the inbox, seeded by how many demo batches of this skill were processed."""
    done = len(list(home.processed.glob(f"demo-{skill}-*.jsonl")))
    path = home.inbox / f"demo-{skill}-{done:03d}.jsonl"
    if not path.exists():
        write_jsonl(CATALOGUE[skill].items("train", rows, seed=1000 + done), path)
    return path


def run_demo(skill: str = "add", rows: int = 2048, config: str | None = None, overrides=()) -> int:
    home = prepare_stores(current_home())
    print(f"continual-opd demo: home {home.root}")
    champion = bootstrap(home)
    batch = demo_batch_path(home, skill, rows)
    print(f"demo batch: {batch} ({rows} rows of {skill}); champion {champion.name} v{champion.version}")
    try:
        params = load_params(str(batch), config, list(overrides))
    except ParamsError as exc:
        print(f"error: {exc}")
        return EXIT_ERROR
    return run_update(params)
