"""The Prefect flows: `continual_update` (one update) and `nightly_updates` (every new inbox batch).

Importing `continual_opd` first applies its offline and telemetry-off defaults before Prefect reads its settings.
"""

import continual_opd  # noqa: F401
