"""continual-opd: teach a production LLM new skills without breaking old ones.

Importing the package applies the offline, telemetry-off defaults before any heavy library reads its
settings (see `continual_opd.home`).
"""

from continual_opd.home import apply_env_defaults

apply_env_defaults()

__version__ = "0.1.0"
