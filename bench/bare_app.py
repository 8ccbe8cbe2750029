"""The reference for the webhook benchmark: one Flask route that answers a POST and does
nothing else, served by the same gunicorn settings and hit by the same client."""

from flask import Flask

app = Flask(__name__)


@app.post("/webhooks/stripe")
def receive() -> dict[str, bool]:
    return {"received": True}
