"""Automation: the jobs, the monthly schedule and the sensors that start runs between schedules."""
