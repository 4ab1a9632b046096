"""Request metrics: counts and latency histograms as Prometheus reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from api.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_request_latencies_land_in_less_or_equal_buckets_and_counts_add_up() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.003, 0.003, 20.0):  # on a bound, inside one, beyond all
        metrics.observe_request("GET", "/v1/receipts/{receipt_id}", 200, seconds)
    metrics.observe_request("GET", "/v1/receipts/{receipt_id}", 404, 0.0001)
    metrics.observe_request("BREW", "unmatched", 405, 0.0001)
    s = _samples(metrics)
    route = ("route", "/v1/receipts/{receipt_id}")

    def bucket(le: str) -> float:
        return s[("maip_http_request_duration_seconds_bucket", (("le", le), route))]

    assert bucket("0.001") == 2  # 0.0001 and 0.001: a bound is inclusive
    assert bucket("0.0025") == 2
    assert bucket("0.005") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert s[("maip_http_request_duration_seconds_count", (route,))] == 5
    assert abs(s[("maip_http_request_duration_seconds_sum", (route,))] - 20.0071) < 1e-9
    ok = (("method", "GET"), route, ("status", "200"))
    assert s[("maip_http_requests_total", ok)] == 4
    assert s[("maip_http_requests_total", (("method", "GET"), route, ("status", "404")))] == 1
    # A made-up method is one series, not one per method a client invents.
    other = (("method", "other"), ("route", "unmatched"), ("status", "405"))
    assert s[("maip_http_requests_total", other)] == 1
