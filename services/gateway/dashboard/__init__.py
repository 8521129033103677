"""The dashboard the gateway serves at /app/ (docs/api.md section 8): server-rendered pages."""
