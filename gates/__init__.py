"""The promotion gate: the policy (YAML and its semantics), the decision and rollback, the lock, the audit trail,
the status and history views and the decision report."""
