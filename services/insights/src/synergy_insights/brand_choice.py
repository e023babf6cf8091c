"""Which brand a webhook posted to a contract path belongs to. Pure: no I/O.

Customer.io's webhooks carry no brand. Guessing it is a single-tenant convenience, for the contract
paths only (a multi-brand deployment points each workspace at its `/{brand}` path). The candidates are
the active brands without a signing key of their own (BrandDirectory's queries), so the deployment's
key never writes to a brand that has its own. The rule, first match wins:
1. `INSIGHTS_DEFAULT_BRAND_ID` when it is configured;
2. the one candidate brand that has a user with the webhook's external user id;
3. the only candidate brand, when none knows that user and just one exists.
Otherwise (several brands know the user, or several brands exist and none knows it) the webhook is
logged without a brand and stays pending; the retry loop applies the rule again until it resolves.
"""

from __future__ import annotations

from collections.abc import Sequence


def choose_brand(
    default_brand: int | None, brands_knowing_user: Sequence[int], active_brands: Sequence[int]
) -> int | None:
    if default_brand is not None:
        return default_brand
    knowing = set(brands_knowing_user)
    if len(knowing) == 1:
        return next(iter(knowing))
    if not knowing and len(set(active_brands)) == 1:
        return active_brands[0]
    return None
