"""Email preferences, one-click unsubscribe, preference-centre pages, open/click tracking and
recommendations: the routes `app.py` includes. (Owned by issue 10; filled in there.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
