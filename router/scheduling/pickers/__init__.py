"""Pickers: each orders the scored candidates, best first."""
