"""Prometheus metrics of the control plane (one registry per application instance).

Labels stay bounded: routes are the registered patterns, never raw paths, ids or users.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector


class ControlMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.http_requests = Counter(
            "meeting_sfu_http_requests_total",
            "HTTP requests by route pattern, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "meeting_sfu_http_request_duration_seconds",
            "HTTP request handling time by route pattern",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.meetings_active = Gauge(
            "meeting_sfu_meetings_active", "Meetings currently started", registry=r
        )
        self.participants = Gauge(
            "meeting_sfu_participants", "Participants in started meetings", registry=r
        )
        self.websocket_sessions = Gauge(
            "meeting_sfu_websocket_sessions", "Open /events websockets", registry=r
        )
        self.waiting_users = Gauge(
            "meeting_sfu_waiting_users", "Users waiting in meeting queues", registry=r
        )
        self.events_sent = Counter(
            "meeting_sfu_events_sent_total", "Events pushed to websocket sessions", registry=r
        )
        self.websocket_overflows = Counter(
            "meeting_sfu_websocket_overflows_total",
            "Websockets closed because they did not drain their bounded event queue",
            registry=r,
        )

    def bind(
        self,
        meetings_active: Callable[[], float],
        participants: Callable[[], float],
        websocket_sessions: Callable[[], float],
    ) -> None:
        """Gauges read their values from the live state when scraped (waiting_users, which is
        in the store, is set by the /metrics handler: a gauge's function cannot await)."""
        self.meetings_active.set_function(meetings_active)
        self.participants.set_function(participants)
        self.websocket_sessions.set_function(websocket_sessions)
