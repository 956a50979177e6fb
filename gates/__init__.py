"""The promotion gate: policy (YAML + semantics), paired statistics, registry moves, audit trail and report."""
