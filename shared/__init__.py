"""Code every Funnelstream service shares: event contracts, the bus, stores, settings, auth, errors."""
