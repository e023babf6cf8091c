"""Seed 002's dispatcher: events from Kafka to each brand's signed webhooks and PostHog projects."""
