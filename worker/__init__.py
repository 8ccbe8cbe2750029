"""Celery workers: charges, webhooks and periodic sweeps."""
