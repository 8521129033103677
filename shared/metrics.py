"""Prometheus metrics, labelled by service so one process running every service stays readable."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "funnelstream_http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "funnelstream_http_request_duration_seconds", "HTTP request latency", ["service", "method", "route"]
)
BUS_PROCESSED = Counter(
    "funnelstream_bus_messages_processed_total", "Bus messages handled", ["service", "topic"]
)
BUS_DLQ = Counter(
    "funnelstream_bus_dead_letters_total", "Messages sent to a dead letter topic", ["service", "topic"]
)
BUS_DLQ_SIZE = Gauge(
    "funnelstream_bus_dead_letter_records", "Records waiting in a dead letter topic (<topic>.dlq)", ["service", "topic"]
)
BUS_LAG = Gauge(
    "funnelstream_bus_consumer_lag", "Records not yet committed by a consumer group",
    ["service", "group", "topic", "partition"],
)
