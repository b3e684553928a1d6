"""Machine set-up, local services (Spark standalone, Redis) and cluster manifests."""
