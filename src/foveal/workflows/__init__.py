"""foveal.workflows: multi-stage runs built from jobs (the demo; normal-train later)."""
