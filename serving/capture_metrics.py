"""``/metrics`` series for what capture and the shadow mirror dropped, read from their counters.

A collector on the router's registry, read at scrape time: the request path only adds to
plain integers, as it did before, and no caller can grow a label set (the labels are fixed
reasons).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from serving.capture import CaptureWriter
    from serving.shadow import ShadowMirror

CAPTURE_DROP_REASONS = ("buffer_full", "record_too_large", "hourly_cap")


class CaptureCollector:
    """Capture's written and dropped records and bytes, and the shadow queue's drops.

    Args:
        capture: the router's capture writer.
        shadow: the router's shadow mirror.
    """

    def __init__(self, capture: CaptureWriter, shadow: ShadowMirror) -> None:
        self.capture = capture
        self.shadow = shadow

    def collect(self) -> Iterable[Metric]:
        """The series, as of now (prometheus-client calls this on every scrape)."""
        records = CounterMetricFamily(
            "mlops_router_capture_dropped_records",
            "Captured records dropped by a byte cap, by reason.",
            labels=("reason",),
        )
        size = CounterMetricFamily(
            "mlops_router_capture_dropped_bytes",
            "Bytes of captured records dropped by a byte cap, by reason.",
            labels=("reason",),
        )
        for reason in CAPTURE_DROP_REASONS:
            count, dropped = self.capture.dropped.get(reason, (0, 0))
            records.add_metric((reason,), count)
            size.add_metric((reason,), dropped)
        yield records
        yield size
        written = CounterMetricFamily(
            "mlops_router_capture_written_bytes", "Bytes of capture written to the store."
        )
        written.add_metric((), self.capture.written_bytes)
        yield written
        failed = CounterMetricFamily(
            "mlops_router_capture_failed_records", "Captured records whose write failed."
        )
        failed.add_metric((), self.capture.stats["failed_writes"])
        yield failed
        buffered = GaugeMetricFamily(
            "mlops_router_capture_buffered_bytes", "Bytes of capture waiting to be written."
        )
        buffered.add_metric((), self.capture.buffered_bytes)
        yield buffered
        shadow = CounterMetricFamily(
            "mlops_router_shadow_dropped",
            "Shadow copies dropped (queue full in records or bytes, or the mirror stopped).",
        )
        shadow.add_metric((), self.shadow.stats["dropped"])
        yield shadow
        shadow_bytes = CounterMetricFamily(
            "mlops_router_shadow_dropped_bytes", "Bytes of the shadow copies dropped."
        )
        shadow_bytes.add_metric((), self.shadow.dropped_bytes)
        yield shadow_bytes
