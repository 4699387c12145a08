"""The service's endpoints, one ``APIRouter`` per resource; ``create_app`` includes them in this order."""
from __future__ import annotations

from flagstone.server.routes import ask, collections, embeddings, health, rerank

ROUTERS = (health.router, embeddings.router, collections.router, rerank.router, ask.router)
