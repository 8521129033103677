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
BUS_BATCH_SECONDS = Counter(
    "funnelstream_bus_batch_seconds_total",
    "Time a consumer group spent per step of its batches: fetch (poll until records came), apply (the handlers' "
    "transaction) and commit (the offsets); with the batch count, where a consumer's time goes",
    ["service", "group", "step"],
)
BUS_BATCHES = Counter("funnelstream_bus_batches_total", "Batches a consumer group applied", ["service", "group"])
BUS_CONFLICTS = Counter(
    "funnelstream_bus_batch_conflicts_total",
    "Consumed batches the database aborted (deadlock, serialization failure) and that ran again", ["service"],
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
PERIODIC_RUNS = Counter(
    "funnelstream_periodic_job_runs_total",
    "Timer firings of a periodic job: ran, skipped (another replica ran it this interval) or failed",
    ["service", "job", "outcome"],
)
EVENTS_PAST_RETENTION = Counter(
    "funnelstream_events_past_retention_total",
    "Events that arrived older than a service's retention horizon (only with *_EVENTS_RETENTION_DAYS set): applied "
    "to the state kept at any age, their copy not kept (answers reaching before the horizon carry complete_from)",
    ["service"],
)
SURVEY_ANSWERS_IGNORED = Counter(
    "funnelstream_survey_answers_ignored_total",
    "`Survey Responded` events with an unknown survey or a score off its scale: kept in the timeline, no profile "
    "changed (each logged with its event id)", ["service", "problem"],
)
