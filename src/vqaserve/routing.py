"""Canary routes: a share of the requests for one model answered by another, sticky per picture.

`shop-toy -> {v2: 10}`: 10 % of the requests for `shop-toy` are answered by adapter `v2`, the rest by
shop-toy itself. Which 10 %: the first picture's content hash (or, for a request without one, its
request id) is hashed into one of 10,000 buckets, and the targets own the lowest buckets in order.
So a customer's follow-up question about the same photo lands on the same model, and raising a
share (10 % -> 50 %) keeps every picture already on the target there. The pipeline decides before
the cache lookup, so the cache key names the model that really answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from vqaserve.errors import InvalidRequest

BUCKETS = 10_000  # shares are honoured to 0.01 %


@dataclass(frozen=True)
class Route:
    model: str  # the model clients ask for
    shares: tuple[tuple[str, float], ...]  # (target model, percent of the requests), in bucket order

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "to": dict(self.shares)}


def bucket(model: str, sticky: str) -> int:
    digest = hashlib.blake2b(f"{model}\x00{sticky}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class RoutingTable:
    """Routes by the model they apply to. Changed by the admin API, read on every request."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def targets(self) -> dict[str, str]:
        """target model -> a model whose route sends requests to it."""
        return {target: route.model for route in self._routes.values() for target, _ in route.shares}

    def set(self, model: str, shares: Mapping[str, float]) -> Route:
        route = Route(model, tuple((str(t), float(p)) for t, p in shares.items()))
        check(route)
        self._routes[model] = route
        return route

    def remove(self, model: str) -> Route | None:
        return self._routes.pop(model, None)

    def pick(self, model: str, sticky: str) -> str:
        """The model that answers a request for `model` whose picture (or id) is `sticky`."""
        route = self._routes.get(model)
        if route is None:
            return model
        at, edge = bucket(model, sticky), 0
        for target, percent in route.shares:
            edge += round(percent * BUCKETS / 100)
            if at < edge:
                return target
        return model


def check(route: Route) -> None:
    """A route that makes sense, or InvalidRequest naming the fix."""
    if not route.shares:
        raise InvalidRequest('to: give at least one target and its share in percent, e.g. {"v2": 10}; to stop '
                             "routing, DELETE the route", param="to")
    total = 0.0
    for target, percent in route.shares:
        if target == route.model:
            raise InvalidRequest(f"to: {target!r} is the routed model itself; name another model to send a "
                                 "share to", param="to")
        if not 0.0 < percent <= 100.0:
            raise InvalidRequest(f"to.{target}: {percent:g} is not a share; give a percentage above 0 and at "
                                 "most 100", param="to")
        total += percent
    if total > 100.0 + 1e-9:
        raise InvalidRequest(f"to: the shares add up to {total:g} %; at most 100 % of the requests can be "
                             "sent elsewhere", param="to")
