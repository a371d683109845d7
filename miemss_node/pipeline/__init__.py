"""The image pipeline: decode, enhance, features, anomaly scores, regions, report."""
