"""Insights: signed Customer.io webhooks into Postgres, and a cached predictions read API."""
