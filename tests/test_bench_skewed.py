"""The skewed bench's cloud-length estimate (bench/skewed.py): the copier's plan, in bytes per job."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import skewed  # noqa: E402  (bench/skewed.py)

# The standard sample's shares (dev/sample_data.py), in percent of the bytes.
STANDARD = {"public.events": 40, "public.orders": 14, "public.order_lines": 12, "public.page_views": 10,
            "public.customers": 8, "sales.invoices": 7, "public.products": 4, '"Mixed Case"': 3,
            "sales.refunds": 2}


def test_five_jobs_wait_for_the_whole_big_table_and_not_for_its_slices():
    assert skewed.longest_over_mean(STANDARD, 5) == pytest.approx(2.0)  # events alone: 40 of a 20 mean
    # Four slices of 10: the longest job is orders, products and "Mixed Case", 21 of a 20 mean.
    assert skewed.longest_over_mean(STANDARD, 5, {"public.events"}) == pytest.approx(1.05)
    loads = skewed.job_loads(STANDARD, 5, {"public.events"})
    assert sorted(loads) == pytest.approx([19, 20, 20, 20, 21])


def test_a_table_that_cannot_be_sliced_still_sets_the_length():
    assert skewed.longest_over_mean(STANDARD, 5, {"public.orders"}) == pytest.approx(2.0)


def test_the_big_table_is_resized_to_a_share_of_the_total():
    skewed_weights = skewed.with_share(STANDARD, "public.events", 0.72)
    assert skewed_weights["public.events"] / sum(skewed_weights.values()) == pytest.approx(0.72)
    assert skewed.with_share(skewed_weights, "public.events", 0.40) == pytest.approx(STANDARD)
    assert skewed.longest_over_mean(skewed_weights, 2) == pytest.approx(1.44)
