"""SCARLet (shared-context multi-task synthesis with utility attribution)."""
