"""The command line, `continual-opd`: the top layer, over the flows, the stages' plain functions and the registry.

Importing `continual_opd` first applies its offline and telemetry-off defaults before any library reads them.
"""

import continual_opd  # noqa: F401
