"""Unit probes: images that most activate a unit versus a random direction (Section 3)."""
