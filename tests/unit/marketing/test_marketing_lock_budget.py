"""The start-up warning when a replica's batches could take more than half of Postgres's lock table."""

from synergy_marketing.consumer import locks_may_run_out


def test_the_default_batches_fit_the_projects_postgres() -> None:
    # 8,000 persons a batch (the default), 2 in flight, against 256 locks x 300 connections (the local
    # launcher's): 32,000 locks for two replicas, under the 76,800 slots.
    assert locks_may_run_out(8000, 2, 76_800) is False


def test_the_default_batches_warn_on_a_stock_postgres() -> None:
    # Postgres's defaults: 64 locks a transaction x 100 connections = 6,400 slots.
    assert locks_may_run_out(8000, 2, 6_400) is True


def test_half_the_table_is_the_line() -> None:
    assert locks_may_run_out(1600, 2, 6_400) is False
    assert locks_may_run_out(1601, 2, 6_400) is True
