"""`make bench`: every benchmark, each printed with its ratio to a baseline measured in the same run
(never a timed test: these machines are noisy, a ratio in one process is what we compare)."""
from __future__ import annotations

import time

from bench import (
    dashboard,
    end_to_end,
    followup,
    funnel,
    importing,
    ingest,
    journeys,
    recommendation,
    segment_preview,
    segmentation,
    segmentation_rss,
)

BENCHMARKS = [("ingest", ingest.main), ("segmentation", segmentation.main),
              ("segment preview", segment_preview.main), ("funnel", funnel.main),
              ("journey analytics", journeys.main),
              ("follow-up scheduler", followup.main), ("segmentation RSS", segmentation_rss.main),
              ("funnelstream import, end to end", importing.main),
              ("track events, end to end", end_to_end.main),
              ("recommendation, Online Retail", recommendation.main),
              ("dashboard pages, demo shop", dashboard.main)]


def main() -> None:
    for name, run in BENCHMARKS:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        run()
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
