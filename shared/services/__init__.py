"""One module per use case. Each takes a unit of work (and the payment gateway when it
needs one) and returns domain values or small read models; nothing here knows HTTP,
Celery or the command line."""
