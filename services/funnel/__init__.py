"""The funnel service: funnel definitions, stage transitions, conversion reports."""
