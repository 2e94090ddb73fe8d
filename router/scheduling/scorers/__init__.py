"""Scorers: each rates candidates in [0, 1], higher is better."""
