"""The ingest service: Segment-compatible tracking API, identity stitching, timelines, quarantine."""
