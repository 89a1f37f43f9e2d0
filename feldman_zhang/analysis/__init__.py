"""What the analysis commands compute, importable from an installed package."""
