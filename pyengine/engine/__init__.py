"""Target-independent job machinery: scan the source, plan names and blocks, decide per file
(already there, resume, skip, send), send through the native pipeline to a target, and run the
job with its events, report and mirror deletions. Nothing here builds an HTTP request."""
