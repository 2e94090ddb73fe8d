"""The scheduling framework: filters -> weighted scorers -> one picker, per objective profile.

The framework holds no opinions; every opinion is a plugin module under filters/,
scorers/ or pickers/, and profiles.py names which plugins an objective uses and
with what weights (from configuration).
"""
