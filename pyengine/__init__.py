"""pyengine: bulk transfer of large archives into Azure Blob Storage with a native read/hash/encrypt core."""
