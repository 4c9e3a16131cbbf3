"""Training: the Lightning task, the seed's schedule, weight export and the train entry point."""
