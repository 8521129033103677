"""The gateway: one JSON API in front of the four services (routing, auth, request ids, docs)."""
