"""Seat billing: domain, persistence, configuration and the Stripe gateway.

Nothing in this package imports Flask or Celery, so web and worker share it.
"""
