"""The card processor: the port the services use, the Stripe adapter, an in-memory fake."""
