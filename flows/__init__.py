"""The Prefect flows: `continual_update` (one update) and `nightly_updates` (every new inbox batch)."""
