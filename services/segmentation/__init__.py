"""The segmentation service: customer profiles, lifecycle, value and frequency tiers, RFM, rule segments."""
