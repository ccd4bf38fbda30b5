"""The driver side: CLI, the job driver, resources and the demo."""
