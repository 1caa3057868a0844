"""The harness's own plugins, registered through the entry-point group ``harness`` exactly
as a third-party package's would be (see pyproject.toml)."""
