"""What load to send: a rollout's traffic model (rollout), its shape over a run (shapes), and
load-test profiles with the plan the Locust process runs (profiles). Pure: no I/O but YAML."""
