"""What a worker reports about itself: live counters (counters.py) and the status messages
built from them and the residency table (report.py)."""
