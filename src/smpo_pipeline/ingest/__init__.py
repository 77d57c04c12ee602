"""Ingestion of Pick-a-Pic v2 shards: schema checks, image inspection, a Great Expectations suite,
and the per-shard classification into valid / dropped / quarantined rows. No Kedro imports."""
