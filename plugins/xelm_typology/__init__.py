"""xelm typology clusterer (being written)."""
