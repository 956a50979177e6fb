"""Running one continual update in this process, as `continual-opd run` and `demo` do (the benchmark too)."""

from cli.outcome import print_outcome
from continual_opd.home import current_home
from flows.continual_update import continual_update


def run_flow(params):
    """Run the flow in this process; returns its final state and its result (an exception when it failed)."""
    # Before Prefect starts its API with its database in the home: an unwritable home would otherwise cost a
    # 2-minute start-up timeout and a page of traceback instead of this HomeError (main prints it, exit 1).
    current_home().ensure()
    state = continual_update(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def run_update(params) -> int:
    """Run the flow in this process and turn its outcome into an exit code and a readable summary."""
    return print_outcome(params, *run_flow(params))
