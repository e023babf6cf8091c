"""Marketing: behaviour-triggered messages on event time (abandoned cart, browse abandonment, price drop,
back in stock), the marketing queue, email preferences and their one-click unsubscribe."""
