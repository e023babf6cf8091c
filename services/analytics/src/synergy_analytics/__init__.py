"""Analytics: every event into user_action_log, seed 003's read models, seed 002's funnels and KPIs."""
