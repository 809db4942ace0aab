"""xelm balanced TF-IDF clusterer (being written)."""
