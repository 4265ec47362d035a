"""Scale-out on Dask distributed (README "Scale-out with Dask"): the driver (driver.py,
dispatch.py) runs the job and its journal; workers (worker.py) read, send and commit shards of
files (shard.py) on an embedded LocalCluster or an existing cluster (cluster.py)."""
