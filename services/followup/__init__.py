"""The followup service: follow-up policies, schedules, reminders, on-time stats."""
