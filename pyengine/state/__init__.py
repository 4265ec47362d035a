"""What a job leaves behind and checks against: the SQLite journal, the per-job lock, the audit
manifest, and verify (the destination against the journal)."""
