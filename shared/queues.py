"""Names the web and the worker agree on: queues and task names (plain strings)."""

CHARGES = "charges"
WEBHOOKS = "webhooks"
DEFAULT = "default"

CHARGE_PURCHASE = "seats.charge_purchase"
PROCESS_EVENT = "seats.process_event"
SWEEP = "seats.sweep"
RECONCILE = "seats.reconcile"


LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def celery_settings(redis_url: str | None) -> dict[str, object]:
    """Broker settings for both the sender (web) and the consumer (worker).

    Late acks with reject-on-lost so a killed worker's task comes back; prefetch 1
    so a slow charge never holds others; the visibility timeout outlives any
    countdown we use; separate queues so webhooks never starve charges.
    """
    url = redis_url or LOCAL_REDIS
    return {
        "broker_url": url,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT,
        "task_routes": {
            CHARGE_PURCHASE: {"queue": CHARGES},
            PROCESS_EVENT: {"queue": WEBHOOKS},
        },
        "broker_transport_options": {"visibility_timeout": 3600},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.5,
        },
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
    }
