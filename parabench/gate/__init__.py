"""The regression gate: stored runs, machine keys, the policy, verdicts, and its own validation."""
