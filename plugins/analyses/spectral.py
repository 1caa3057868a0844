"""Per-layer upper Lipschitz bounds (Szegedy et al. 2013, Section 4.3)."""
